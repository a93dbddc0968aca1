"""``dd-medical node``: series in by C-STORE, derived series out to a real PACS (Orthanc, started here on loopback
ports with a config file written by the test), and the faults: destination down then up, the node killed while
receiving and while processing, an unknown calling AE, a corrupt instance, limits, TLS.

Orthanc comes from Debian (``apt-get install -y orthanc dcmtk``, done by ``.ci/run``); where it is not installed the
tests that need it skip and say why. Slices are 64 px and fits a few iterations, so each test takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

pynetdicom = pytest.importorskip("pynetdicom", reason="the node needs pynetdicom: pip install 'dd-medical[node]'")

from dd_medical.batch import MANIFEST_NAME, REPORT_NAME  # noqa: E402
from dd_medical.cli import cli  # noqa: E402
from dd_medical.core.fit import FitConfig  # noqa: E402
from dd_medical.node import STATE_NAME, Destination, Limits, Node, NodeConfig, status_lines  # noqa: E402
from dd_medical.phantom import ct_phantom  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ORTHANC = shutil.which("Orthanc")
STORESCU = shutil.which("storescu")
SECRET_NAME, SECRET_ID = "Secret^Patient", "SECRET-ID-30"
TINY = FitConfig(channels=8, blocks=2, iterations=10, ensemble=1)
#: The CLI's smallest fit: the fast preset with a few steps.
CLI_FIT = ["--preset", "fast", "--iterations", "5", "--device", "cpu"]
NODE_AE, SCANNER_AE = "DDMED", "SCANNER"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------------------------
# A real PACS: Orthanc on loopback ports


class Orthanc:
    """An Orthanc instance with its own storage, on free ports, configured by a file written here."""

    def __init__(self, root: Path, aet: str = "ORTHANC") -> None:
        self.root, self.aet = root, aet
        self.dicom_port, self.http_port = _free_port(), _free_port()
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "dd-medical-test", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
            "DicomAet": aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "DicomCheckCalledAet": True, "StorageCompression": False,
            "HttpServerEnabled": True, "DicomServerEnabled": True, "ConcurrentJobs": 1,
        }))

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # the child keeps its own copy
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=log, cwd=self.root)
        log.close()
        _wait(self._up, 60, "Orthanc to start")
        return self

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            return self.get("/system")["DicomPort"] == self.dicom_port
        return False

    def stop(self) -> None:
        """Stop it at once (its storage is the test's own)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def series(self) -> list[dict]:
        """Every series stored: ``MainDicomTags`` and ``Instances`` (Orthanc ids), with ``SeriesInstanceUID``."""
        return self.get("/series?expand")

    def tags(self, instance: str) -> dict:
        return self.get(f"/instances/{instance}/simplified-tags")

    def derived_series(self) -> list[dict]:
        return [s for s in self.series() if "denoised" in s["MainDicomTags"].get("SeriesDescription", "")]


@pytest.fixture
def orthanc(tmp_path: Path):
    if ORTHANC is None:
        reason = "Orthanc is not installed (apt-get install -y orthanc dcmtk): the node's PACS tests are skipped"
        print(reason)
        pytest.skip(reason)
    server = Orthanc(tmp_path / "orthanc")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def orthanc_later(tmp_path: Path):
    """An Orthanc configured but not started: the destination is down until the test starts it."""
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (apt-get install -y orthanc dcmtk): the node's PACS tests are skipped")
    server = Orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------
# Source series, a scanner, the node


def make_series(folder: Path, slices: int = 8, size: int = 64, modality: str = "CT", seed: int = 0) -> list[Path]:
    """A noisy original CT (HU, int16) or MR (uint16) series of ``slices`` axial 64 px slices, one file each,
    carrying a patient name and ID that must never show up in a log."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    values = ct_phantom(slices, size, seed) + rng.normal(0, 40, (slices, size, size))
    if modality == "MR":
        values = np.clip((values + 1000) / 2, 0, None)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = SECRET_NAME, SECRET_ID, "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20240101", "120000", "1", "ACC30", "")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-22.4, -22.4, 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        if modality == "CT":
            ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 1, 0, 1
            pixels = np.round(values[k]).astype(np.int16)
        else:
            ds.PixelRepresentation = 0
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
            pixels = np.round(values[k]).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def scanner_ae(ae_title: str = SCANNER_AE):
    ae = pynetdicom.AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def send(files, port: int, *, calling: str = SCANNER_AE, tls=None) -> list[tuple[int, str]]:
    """C-STORE ``files`` (paths or datasets) over one association, as a scanner does; ``(status, comment)`` each."""
    assoc = scanner_ae(calling).associate("127.0.0.1", port, ae_title=NODE_AE, tls_args=tls)
    assert assoc.is_established, "association with the node failed"
    results = []
    try:
        for item in files:
            status = assoc.send_c_store(item)
            results.append((int(status.Status), str(status.get("ErrorComment", "") or "")))
    finally:
        assoc.release()
    return results


@contextlib.contextmanager
def running_node(work: Path, destination: str, **options):
    """A node in this process (its own threads) on a free port; yields it, stops it after."""
    config = NodeConfig(work_dir=work, destination=Destination.parse(destination), ae_title=NODE_AE,
                        host="127.0.0.1", port=0, fit=options.pop("fit", TINY), device="cpu",
                        settle=options.pop("settle", 0.3), retry_delay=options.pop("retry_delay", 0.3),
                        tick=0.05, **options)
    node = Node(config)
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            node.serve(ready=lambda _: ready.set())
        except BaseException as err:  # surfaced in the test
            failure.append(err)
            ready.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(60)
    if failure:
        raise failure[0]
    try:
        yield node
    finally:
        node.stop()
        thread.join(30)


def _node_status(work: Path) -> dict[str, str]:
    with contextlib.suppress(sqlite3.OperationalError):
        conn = sqlite3.connect(f"file:{work / STATE_NAME}?mode=ro", uri=True, timeout=30)
        try:
            return {uid: status for uid, status in conn.execute("SELECT uid, status FROM series")}
        finally:
            conn.close()
    return {}


def _source_uids(files) -> tuple[str, set[str]]:
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return str(headers[0].SeriesInstanceUID), {str(h.SOPInstanceUID) for h in headers}


def _check_derived(orthanc: Orthanc, series: dict, source_files) -> None:
    """Every instance DERIVED, in the source's study, referencing a source instance; every source instance
    referenced once."""
    _, source_sops = _source_uids(source_files)
    study = str(pydicom.dcmread(source_files[0], stop_before_pixels=True).StudyInstanceUID)
    referenced = []
    for instance in series["Instances"]:
        tags = orthanc.tags(instance)
        assert tags["ImageType"].split("\\")[0] == "DERIVED"
        assert tags["StudyInstanceUID"] == study
        assert tags["SeriesInstanceUID"] != _source_uids(source_files)[0]
        referenced += [item["ReferencedSOPInstanceUID"] for item in tags["SourceImageSequence"]]
    assert sorted(referenced) == sorted(source_sops)


def _unsent(work: Path) -> int:
    """Derived series the node has not finished sending (-1 before it has any)."""
    with contextlib.suppress(sqlite3.OperationalError):
        conn = sqlite3.connect(f"file:{work / STATE_NAME}?mode=ro", uri=True, timeout=30)
        try:
            counts = conn.execute("SELECT COUNT(*), SUM(status IN ('pending', 'started')) FROM sends").fetchone()
            return counts[1] if counts[0] else -1
        finally:
            conn.close()
    return -1


def _wait_derived(orthanc: Orthanc, count: int, work: Path, timeout: float = 120) -> list[dict]:
    """The derived series in Orthanc once there are ``count`` of them and the node has nothing left to send (every
    instance it sent acknowledged, so stored)."""
    def ready():
        found = orthanc.derived_series()
        return found if len(found) >= count and _unsent(work) == 0 else None
    return _wait(ready, timeout, f"{count} derived series in Orthanc", interval=0.2)


# ---------------------------------------------------------------------------------------------------------------
# Tests with Orthanc


def test_a_series_sent_to_the_node_arrives_in_orthanc_derived_and_referencing_its_source(tmp_path, orthanc, caplog):
    caplog.set_level("INFO")
    source = make_series(tmp_path / "ct", slices=20)
    work = tmp_path / "work"
    with running_node(work, orthanc.destination, allow=(SCANNER_AE,)) as node:
        echo = scanner_ae().associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert echo.is_established and echo.send_c_echo().Status == 0
        echo.release()
        if STORESCU:  # the scanner is dcmtk's storescu
            done = subprocess.run([STORESCU, "-aet", SCANNER_AE, "-aec", NODE_AE, "127.0.0.1", str(node.port),
                                   *map(str, source)], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        else:
            assert [s for s, _ in send(source, node.port)] == [0] * len(source)
        last_received = time.monotonic()
        _wait(lambda: [s for s in orthanc.derived_series() if len(s["Instances"]) == len(source)], 120,
              "the derived series in Orthanc", interval=0.05)
        latency = time.monotonic() - last_received
        (derived,) = _wait_derived(orthanc, 1, work)
        assert len(derived["Instances"]) == len(source)
        _check_derived(orthanc, derived, source)
        series_uid, _ = _source_uids(source)
        _wait(lambda: _node_status(work).get(series_uid) == "sent", 30, "status sent")
    print(f"last instance received -> derived series in Orthanc: {latency:.1f} s (settle 0.3 s, 20 slices of 64 px)")
    assert (work / "batch" / MANIFEST_NAME).is_file() and (work / "batch" / REPORT_NAME).is_file()
    assert series_uid in (work / "batch" / REPORT_NAME).read_text()
    assert not any((work / "outbox").iterdir()) and not any((work / "input").iterdir())
    (line,) = status_lines(work)
    assert line.startswith(f"{series_uid} sent instances=20")
    assert any(getattr(r, "node_event", "") == "series" and r.node_fields.get("status") == "sent"
               for r in caplog.records)
    for record in caplog.records:
        assert SECRET_NAME not in record.getMessage() and SECRET_ID not in record.getMessage()


def test_the_destination_down_then_up_gets_the_derived_series_once(tmp_path, orthanc_later):
    source = make_series(tmp_path / "ct", slices=6)
    work = tmp_path / "work"
    with running_node(work, orthanc_later.destination) as node:
        assert [s for s, _ in send(source, node.port)] == [0] * 6
        _wait(lambda: "retrying: cannot reach" in (status_lines(work) or [""])[0], 60,
              "a failed send to the destination that is down")
        series_uid, _ = _source_uids(source)
        assert _node_status(work)[series_uid] == "sending"
        assert any((work / "outbox").iterdir()), "the derived series waits in the outbox"
        orthanc_later.start()
        (derived,) = _wait_derived(orthanc_later, 1, work)
        _wait(lambda: _node_status(work)[series_uid] == "sent", 30, "status sent")
    assert len(derived["Instances"]) == 6
    _check_derived(orthanc_later, derived, source)


def test_a_corrupt_instance_is_refused_with_a_reason_and_the_rest_of_the_series_is_processed(tmp_path, orthanc):
    source = make_series(tmp_path / "ct", slices=6)
    datasets = [pydicom.dcmread(p) for p in source]
    datasets[2].PixelData = datasets[2].PixelData[:1000]  # truncated on the way
    work = tmp_path / "work"
    with running_node(work, orthanc.destination) as node:
        results = send(datasets, node.port)
        (derived,) = _wait_derived(orthanc, 1, work)
    assert [s for s, _ in results] == [0, 0, 0xC000, 0, 0, 0]
    assert "pixel data" in results[2][1]
    assert len(derived["Instances"]) == 5
    report = (tmp_path / "work" / "batch" / REPORT_NAME).read_text()
    assert str(datasets[2].SOPInstanceUID) in report and "pixel data" in report


def test_a_later_instance_starts_the_series_again_and_duplicates_are_recognised(tmp_path, orthanc):
    source = make_series(tmp_path / "mr", slices=5, modality="MR")
    work = tmp_path / "work"
    with running_node(work, orthanc.destination) as node:
        assert [s for s, _ in send(source[:4], node.port)] == [0] * 4
        (first,) = _wait_derived(orthanc, 1, work)
        assert len(first["Instances"]) == 4
        series_uid, _ = _source_uids(source)
        _wait(lambda: _node_status(work).get(series_uid) == "sent", 30, "status sent")
        assert [s for s, _ in send(source[:4], node.port)] == [0] * 4  # the scanner resends: duplicates
        time.sleep(2)
        assert _node_status(work)[series_uid] == "sent" and len(orthanc.derived_series()) == 1
        assert [s for s, _ in send(source[4:], node.port)] == [0]  # a late slice: the series starts again
        found = _wait_derived(orthanc, 2, work)
    assert sorted(len(s["Instances"]) for s in found) == [4, 5]
    _check_derived(orthanc, max(found, key=lambda s: len(s["Instances"])), source)


def _start_cli_node(work: Path, destination: str, log: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    offset = log.stat().st_size if log.exists() else 0
    handle = open(log, "ab")  # closed below; the child keeps its copy
    process = subprocess.Popen(
        [sys.executable, "-m", "dd_medical.cli", "node", "--ae-title", NODE_AE, "--host", "127.0.0.1", "--port", "0",
         "--work-dir", str(work), "--destination", destination, *CLI_FIT, *extra],
        stdout=handle, stderr=handle, env=env)
    handle.close()
    return process, _wait(lambda: _port(log, offset, process), 180, "the node to listen")


def _port(log: Path, offset: int, process: subprocess.Popen) -> int | None:
    """The port the node started at ``offset`` of ``log`` says it listens on (None: not yet)."""
    if process.poll() is not None:
        raise AssertionError(f"the node exited: {log.read_text()[-3000:]}")
    port = None
    for line in log.read_bytes()[offset:].decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "node" and record.get("status") == "listening":
                port = record["port"]
    return port


def test_a_node_killed_while_receiving_and_while_processing_sends_every_series_once(tmp_path, orthanc):
    first = make_series(tmp_path / "first", slices=8, seed=1)
    second = make_series(tmp_path / "second", slices=8, seed=2)
    work, log = tmp_path / "work", tmp_path / "node.log"
    process, port = _start_cli_node(work, orthanc.destination, log, "--settle", "1", "--iterations", "30")
    # Killed in the middle of a series: half of it acknowledged, the association still open.
    assoc = scanner_ae().associate("127.0.0.1", port, ae_title=NODE_AE)
    assert all(int(assoc.send_c_store(p).Status) == 0 for p in first[:4])
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assoc.abort()
    process, port = _start_cli_node(work, orthanc.destination, log, "--settle", "1", "--iterations", "30")
    assert [s for s, _ in send(first, port)] == [0] * 8  # the scanner sends it all again: 4 duplicates
    # Killed while processing the second series.
    assert [s for s, _ in send(second, port)] == [0] * 8
    second_uid, _ = _source_uids(second)
    _wait(lambda: _node_status(work).get(second_uid) == "processing", 120, "processing", interval=0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process, port = _start_cli_node(work, orthanc.destination, log, "--settle", "1", "--iterations", "30")
    try:
        found = _wait_derived(orthanc, 2, work, timeout=300)
        _wait(lambda: set(_node_status(work).values()) == {"sent"}, 60, "both series sent")
        time.sleep(2)  # nothing else arrives
        assert len(orthanc.derived_series()) == 2
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, log.read_text()[-2000:]
    by_source = {}
    for series in found:
        tags = orthanc.tags(series["Instances"][0])
        by_source[tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"]] = series
    for files in (first, second):
        (series,) = [s for uid, s in by_source.items() if uid in _source_uids(files)[1]]
        assert len(series["Instances"]) == 8
        _check_derived(orthanc, series, files)
    text = log.read_text()
    assert SECRET_NAME not in text and SECRET_ID not in text
    assert '"status": "duplicate"' in text


def test_once_processes_what_is_pending_and_exits(tmp_path, orthanc):
    source = make_series(tmp_path / "ct", slices=4)
    work = tmp_path / "work"
    down = f"PACS@127.0.0.1:{_free_port()}"
    with running_node(work, down, settle=3600) as node:  # received, never complete while it listens
        assert [s for s, _ in send(source, node.port)] == [0] * 4
    series_uid, _ = _source_uids(source)
    assert _node_status(work) == {series_uid: "receiving"}
    config = NodeConfig(work_dir=work, destination=Destination.parse(down), fit=TINY, device="cpu", settle=0)
    assert Node(config).run_once() is False  # processed, but the destination is down: still to send
    assert _node_status(work) == {series_uid: "sending"}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "dd_medical.cli", "node", "--work-dir", str(work), "--once",
                           "--destination", orthanc.destination, *CLI_FIT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (derived,) = _wait_derived(orthanc, 1, work)
    assert len(derived["Instances"]) == 4 and _node_status(work) == {series_uid: "sent"}
    status = CliRunner().invoke(cli, ["node", "--work-dir", str(work), "--status"])
    assert status.exit_code == 0 and f"{series_uid} sent instances=4" in status.output


# ---------------------------------------------------------------------------------------------------------------
# Tests of the node alone


class FlakyPacs:
    """A destination that refuses the instance at ``fail_at`` (0-based, counted over all associations) once, and
    records every SOPInstanceUID it stores."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.calls, self.stored = fail_at, 0, []
        self.ae = pynetdicom.AE(ae_title="FLAKY")
        for sop_class in (CTImageStorage, MRImageStorage):
            self.ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        handlers = [(pynetdicom.evt.EVT_C_STORE, self._store)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.destination = f"FLAKY@127.0.0.1:{self.server.server_address[1]}"

    def _store(self, evt) -> int:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            return 0xA700
        self.stored.append(str(evt.request.AffectedSOPInstanceUID))
        return 0x0000


def test_an_interrupted_send_resumes_with_the_instances_not_yet_acknowledged(tmp_path):
    source = make_series(tmp_path / "ct", slices=6)
    pacs = FlakyPacs(fail_at=3)
    work = tmp_path / "work"
    try:
        with running_node(work, pacs.destination) as node:
            assert [s for s, _ in send(source, node.port)] == [0] * 6
            series_uid, _ = _source_uids(source)
            _wait(lambda: _node_status(work).get(series_uid) == "sent", 120, "status sent")
    finally:
        pacs.server.shutdown()
    assert pacs.calls == 7 and len(pacs.stored) == len(set(pacs.stored)) == 6  # each instance stored once


def test_an_enhanced_multiframe_ct_is_received_and_sent_as_a_derived_series_of_its_frames(tmp_path):
    from test_dicom_tree import enhanced_ct

    enhanced = tmp_path / "enhanced.dcm"
    enhanced_ct(enhanced, depth=4, size=32)
    pacs = FlakyPacs(fail_at=-1)  # never refuses
    ae = pynetdicom.AE(ae_title=SCANNER_AE)
    ae.add_requested_context(EnhancedCTImageStorage, ExplicitVRLittleEndian)
    work = tmp_path / "work"
    try:
        with running_node(work, pacs.destination) as node:
            assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
            assert int(assoc.send_c_store(enhanced).Status) == 0
            assoc.release()
            series_uid = str(pydicom.dcmread(enhanced, stop_before_pixels=True).SeriesInstanceUID)
            _wait(lambda: _node_status(work).get(series_uid) == "sent", 120, "status sent")
    finally:
        pacs.server.shutdown()
    assert len(pacs.stored) == 4  # one derived image per frame


def test_a_restart_keeps_a_file_renamed_just_before_a_kill_and_processes_an_interrupted_series_again(tmp_path):
    from dd_medical.node import NodeState, Receiver, WorkDir

    source = make_series(tmp_path / "ct", slices=4)
    work = WorkDir(tmp_path / "work")
    state = NodeState(work.root / STATE_NAME)
    receiver = Receiver(work, state, Limits())
    for path in source[:3]:
        receiver.store(path.read_bytes(), calling_ae=SCANNER_AE)
    series_uid, _ = _source_uids(source)
    state.mark_received(series_uid, time.time())
    state.set_status(series_uid, "processing", expect="received")  # killed while processing ...
    header = pydicom.dcmread(source[3], stop_before_pixels=True)  # ... and after renaming a 4th instance into place
    shutil.copy(source[3], work.instances / work.series_folder(series_uid) / work.instance_name(header.SOPInstanceUID))
    (work.incoming / "half-written").mkdir()
    state.close()
    config = NodeConfig(work_dir=work.root, destination=Destination.parse(f"PACS@127.0.0.1:{_free_port()}"), fit=TINY,
                        device="cpu", settle=0)
    assert Node(config).run_once() is False  # the destination is down
    row = NodeState(work.root / STATE_NAME).series(series_uid)
    assert row["status"] == "sending" and row["instances"] == 4
    assert not any(work.incoming.iterdir())
    manifest = sqlite3.connect(work.batch / MANIFEST_NAME).execute("SELECT slices, status FROM series").fetchall()
    assert manifest in ([(4, "done")], [(4, "check")])


def test_an_unknown_calling_ae_is_rejected_at_association(tmp_path, caplog):
    caplog.set_level("INFO")
    with running_node(tmp_path / "work", "PACS@127.0.0.1:9", allow=(SCANNER_AE, "CT2")) as node:
        intruder = scanner_ae("INTRUDER").associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert intruder.is_rejected
        wrong_called = scanner_ae().associate("127.0.0.1", node.port, ae_title="NOTDDMED")
        assert wrong_called.is_rejected
        allowed = scanner_ae().associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert allowed.is_established and allowed.send_c_echo().Status == 0
        allowed.release()
    rejected = [r for r in caplog.records if getattr(r, "node_event", "") == "association"
                and r.node_fields.get("status") == "rejected"]
    assert any(r.node_fields["calling_ae"] == "INTRUDER" for r in rejected)


def test_limits_refuse_a_large_instance_and_a_full_work_dir_with_a_reason(tmp_path):
    source = make_series(tmp_path / "ct", slices=3)
    size = source[0].stat().st_size
    with running_node(tmp_path / "small", "PACS@127.0.0.1:9", limits=Limits(max_instance_bytes=size - 1)) as node:
        (result,) = send(source[:1], node.port)
    assert result[0] == 0xA700 and "--max-instance-mb" in result[1]
    with running_node(tmp_path / "full", "PACS@127.0.0.1:9", settle=3600,
                      limits=Limits(max_disk_bytes=int(2.5 * size) + 200_000)) as node:
        node.receiver.refresh_usage()
        node.receiver.usage = 200_000  # the state database, as counted when the node started
        results = send(source, node.port)
    assert [s for s, _ in results] == [0, 0, 0xA700] and "work dir full" in results[2][1]


def test_the_node_speaks_tls_only_when_given_a_certificate(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    import ssl

    from dd_medical.node.service import tls_contexts

    server, _ = tls_contexts(cert, key, None)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    source = make_series(tmp_path / "ct", slices=2)
    with running_node(tmp_path / "work", "PACS@127.0.0.1:9", tls=server, settle=3600) as node:
        assert [s for s, _ in send(source, node.port, tls=(client, "localhost"))] == [0, 0]
        plain = scanner_ae().associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert not plain.is_established


def test_the_command_refuses_uncertainty_and_bad_options_with_a_clear_message(tmp_path):
    runner = CliRunner()
    base = ["node", "--work-dir", str(tmp_path / "w"), "--destination", "PACS@127.0.0.1:4242"]
    result = runner.invoke(cli, [*base, "--uncertainty"])
    assert result.exit_code == 2 and "--uncertainty is not available" in result.output
    result = runner.invoke(cli, ["node", "--work-dir", str(tmp_path / "w"), "--destination", "PACS:4242", "--once"])
    assert result.exit_code == 2 and "AE_TITLE@HOST:PORT" in result.output
    result = runner.invoke(cli, ["node", "--work-dir", str(tmp_path / "w"), "--once"])
    assert result.exit_code == 2 and "--destination" in result.output
    result = runner.invoke(cli, [*base, "--allow", "A" * 17, "--once"])
    assert result.exit_code == 2 and "--allow" in result.output
    result = runner.invoke(cli, [*base, "--status"])
    assert result.exit_code == 2 and "not a dd-medical node work dir" in result.output
    assert Destination.parse("PACS@[::1]:104") == Destination("PACS", "::1", 104)
