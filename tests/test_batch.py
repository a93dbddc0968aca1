"""``dd-medical batch``: every image series of a messy tree out as a valid derived series, resumable after a kill,
bad files and failed series reported, roots that could touch the input refused."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from test_dicom_tree import SECRET_NAME, build_tree

from dd_medical.batch import MANIFEST_NAME, REPORT_NAME, SERIES_DIR, check_roots, run_batch
from dd_medical.cli import cli
from dd_medical.core.fit import FitConfig
from dd_medical.errors import InputError
from dd_medical.io import read_volume, validate_derived, write_series
from dd_medical.phantom import phantom_volume, write_phantom_series

#: Statuses of a series whose outputs are written: "check" when the fidelity check flagged the (tiny) test fits.
WRITTEN = ("done", "check")

REPO = Path(__file__).resolve().parents[1]
TINY = FitConfig(channels=8, blocks=2, iterations=10, ensemble=1)
TINY_ARGS = ["--iterations", "10", "--channels", "8", "--blocks", "2", "--ensemble", "1", "--device", "cpu"]


def _manifest(out: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{out / MANIFEST_NAME}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM series ORDER BY key")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def _series_folders(out: Path) -> list[Path]:
    return sorted((out / SERIES_DIR).iterdir()) if (out / SERIES_DIR).is_dir() else []


def _no_hidden_or_temporary(out: Path) -> None:
    for path in out.rglob("*"):
        if path.name != ".dd-medical-batch.lock":
            assert not path.name.startswith(".") and ".tmp" not in path.name, f"leftover {path}"


def _check_derived_folder(folder: Path) -> None:
    """Reads back with SimpleITK's series reader and with pydicom; every file passes validate_derived; each slice
    keeps its source slice's position and orientation."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    image = reader.Execute()
    files = sorted(folder.iterdir())
    assert len(names) == len(files) == image.GetSize()[2]
    series_uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert validate_derived(ds) == [], path
        series_uids.add(ds.SeriesInstanceUID)
        source_uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source_uid != ds.SOPInstanceUID
        assert ds.SeriesDescription.startswith("Deep Decoder denoised")
    assert len(series_uids) == 1
    volume = read_volume(folder)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), volume.array, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------


def test_messy_tree_gives_every_volume_and_reports_every_bad_file(tmp_path: Path, caplog) -> None:
    root = tmp_path / "export"
    expected = build_tree(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    caplog.set_level("INFO", logger="dd_medical")
    summary = run_batch(root, tmp_path / "out", config=TINY, device="cpu", progress=False)

    assert summary.ok and summary.failed == [] and summary.skipped == []
    assert len(summary.done) == len(expected["volumes"]) == 6
    reasons = dict(summary.bad_files)
    assert {Path(name).name for name in reasons} == set(expected["bad"])
    for name, reason in reasons.items():
        assert expected["bad"][Path(name).name] in reason
    rows = _manifest(tmp_path / "out")
    assert all(r["status"] in WRITTEN for r in rows) and len(rows) == 6
    assert all(r["seconds_task"] > 0 and r["noise_after"] is not None for r in rows)
    excluded = [r["excluded"] for r in rows if r["excluded"] != "[]"]
    assert len(excluded) == 2 and any("copy_of_s1_slice2" in e for e in excluded)

    folders = _series_folders(tmp_path / "out")
    assert len(folders) == 6 and all(f.name.startswith("S") and len(f.name) == 21 for f in folders)
    for folder in folders:
        _check_derived_folder(folder)
    report = (tmp_path / "out" / REPORT_NAME).read_text()
    for row in rows:
        assert row["key"] in report and f"report/{row['folder']}.png" in report
        montage = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "report" / f"{row['folder']}.png")))
        assert montage.dtype == np.uint8 and montage.shape[1] == 3 * montage.shape[0] + 8
    for text in (report, caplog.text, summary.format()):
        assert SECRET_NAME not in text and "SECRET-ID" not in text
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before, "inputs never change"
    _no_hidden_or_temporary(tmp_path / "out")

    # Rerun: everything verified and skipped. A damaged output is detected and redone, alone.
    again = run_batch(root, tmp_path / "out", config=TINY, device="cpu", progress=False)
    assert again.ok and again.done == [] and len(again.skipped) == 6
    damaged = rows[0]
    victim = sorted((tmp_path / "out" / SERIES_DIR / damaged["folder"]).iterdir())[-1]
    victim.unlink()
    third = run_batch(root, tmp_path / "out", config=TINY, device="cpu", progress=False)
    assert third.done == [damaged["key"]] and len(third.skipped) == 5
    _check_derived_folder(tmp_path / "out" / SERIES_DIR / damaged["folder"])


def test_derived_slices_keep_source_geometry_for_single_frame_series(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "in" / "a", depth=2, size=32, seed=2)
    summary = run_batch(tmp_path / "in", tmp_path / "out", config=TINY, device="cpu", progress=False)
    assert summary.ok
    (folder,) = _series_folders(tmp_path / "out")
    for out_file, src_file in zip(sorted(folder.iterdir()), sorted((tmp_path / "in" / "a").iterdir()), strict=True):
        out, src = (pydicom.dcmread(f, stop_before_pixels=True) for f in (out_file, src_file))
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
            assert out.get(keyword) == src.get(keyword), keyword
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert out.SeriesInstanceUID != src.SeriesInstanceUID and out.SOPInstanceUID.startswith("2.25.")


def test_a_legacy_multiframe_series_is_processed_and_keeps_its_frames_and_compression(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """Issue 31: a classic multi-frame object without functional groups failed the batch (exit 1, series missing).
    The fit is replaced by the identity (its output then passes the fidelity check: exit 0); the denoise command's
    test fits it for real."""
    from pydicom.data import get_testdata_file

    from dd_medical.batch import tasks

    seen: list[tuple[int, ...]] = []

    def identity(volume, task):
        seen.append(volume.shape)
        return volume.array

    monkeypatch.setitem(tasks.TASKS, "denoise", identity)
    source_path = Path(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
    (tmp_path / "in" / "mf").mkdir(parents=True)
    (tmp_path / "in" / "mf" / "MF0001").write_bytes(source_path.read_bytes())
    write_phantom_series(tmp_path / "in" / "ct", depth=2, size=32, seed=1)
    source = pydicom.dcmread(source_path)
    runner = CliRunner()
    for out, args, syntax in ((tmp_path / "out", [], source.file_meta.TransferSyntaxUID),
                              (tmp_path / "out_rle", ["--transfer-syntax", "rle"], pydicom.uid.RLELossless)):
        result = runner.invoke(cli, ["batch", str(tmp_path / "in"), str(out), *TINY_ARGS, *args])
        assert result.exit_code == 0, result.output
        assert "2 series done" in result.output and "0 failed" in result.output
        rows = {r["split_key"].split("_")[0]: r for r in _manifest(out)}
        assert {r["status"] for r in rows.values()} == {"done"} and rows["64x64"]["slices"] == 10
        (written,) = (out / SERIES_DIR / rows["64x64"]["folder"]).iterdir()
        ds = pydicom.dcmread(written)
        assert ds.NumberOfFrames == 10 and ds.file_meta.TransferSyntaxUID == syntax
        assert validate_derived(ds, source) == []
        np.testing.assert_allclose(read_volume(written).array, read_volume(source_path).array,
                                   atol=float(ds.RescaleSlope) / 2 + 1e-4)
        ct = sorted((out / SERIES_DIR / rows["32x32"]["folder"]).iterdir())
        assert len(ct) == 2 and pydicom.dcmread(ct[0]).file_meta.TransferSyntaxUID == (
            syntax if args else ExplicitVRLittleEndian)
    assert sorted(seen) == [(2, 32, 32), (2, 32, 32), (10, 64, 64), (10, 64, 64)]


def test_manifest_records_the_transfer_syntax_and_a_changed_one_is_redone(tmp_path: Path, monkeypatch) -> None:
    """The manifest records the syntax each series was written in; a resumed run that writes another one redoes the
    series (as a run asking for an uncertainty map the series lacks does), one that writes the same keeps it. The
    fit is replaced by the identity: only the writing matters here."""
    from dd_medical.batch import tasks

    monkeypatch.setitem(tasks.TASKS, "denoise", lambda volume, task: volume.array)
    write_phantom_series(tmp_path / "in" / "ct", depth=2, size=32, seed=1)  # uncompressed source
    out = tmp_path / "out"

    def run(*syntax: str) -> dict:
        args = ["--transfer-syntax", *syntax] if syntax else []
        result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in"), str(out), *TINY_ARGS, *args])
        assert result.exit_code == 0, result.output
        (row,) = _manifest(out)
        files = sorted((out / SERIES_DIR / row["folder"]).iterdir())
        assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files} == {row["transfer_syntax"]}
        return row

    row = run("rle")
    assert row["transfer_syntax"] == row["transfer_syntax_setting"] == pydicom.uid.RLELossless
    assert row["attempts"] == 1
    assert run("rle")["attempts"] == 1  # same syntax: kept
    row = run("explicit")  # another syntax: redone
    assert row["attempts"] == 2 and row["transfer_syntax"] == ExplicitVRLittleEndian
    row = run()  # auto: an uncompressed source gives Explicit VR Little Endian, as written: kept
    assert row["attempts"] == 2 and row["transfer_syntax_setting"] == ExplicitVRLittleEndian  # what wrote it
    assert run("rle")["attempts"] == 3
    with sqlite3.connect(out / MANIFEST_NAME) as conn:  # a row of a manifest that did not record it: kept
        conn.execute("UPDATE series SET transfer_syntax = NULL")
    conn.close()
    result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in"), str(out), *TINY_ARGS])
    assert result.exit_code == 0 and "1 skipped" in result.output
    assert _manifest(out)[0]["attempts"] == 3


def test_failed_series_do_not_stop_others_and_are_retried_only_when_asked(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "in" / "good", depth=2, size=32, seed=1)
    tiny = phantom_volume(depth=2, size=32, seed=1).array[:, :4, :4]  # 4x4 slices: too small to denoise
    from dd_medical.volume import Volume

    write_series(Volume(tiny, modality="CT"), tmp_path / "in" / "tiny", series_description="tiny")
    _dose_screenshot(tmp_path / "in" / "dose_report")
    runner = CliRunner()
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), *TINY_ARGS, "--org-root", "1.2.826.0.1.3680043.1"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 1, first.output
    assert "1 series done" in first.output and "1 failed" in first.output and "too small" in first.output
    rows = {r["split_key"].split("_")[0]: r for r in _manifest(tmp_path / "out")}
    assert rows["4x4"]["status"] == "failed" and "4x4" in rows["4x4"]["reason"]
    assert rows["32x32"]["status"] in WRITTEN and len(rows) == 2
    assert "not processed dose_report: colour image (3 samples per pixel)" in first.output
    (good,) = [f for f in _series_folders(tmp_path / "out") if f.name == rows["32x32"]["folder"]]
    assert pydicom.dcmread(next(good.iterdir())).SOPInstanceUID.startswith("1.2.826.0.1.3680043.1.")

    second = runner.invoke(cli, args)  # not retried: still reported as failed, exit code 1
    assert second.exit_code == 1 and "failed in an earlier run" in second.output
    assert {r["key"]: r["attempts"] for r in _manifest(tmp_path / "out")} == {r["key"]: 1 for r in rows.values()}
    third = runner.invoke(cli, [*args, "--retry-failed"])
    assert third.exit_code == 1 and "1 skipped" in third.output
    assert {r["split_key"][:3]: r["attempts"] for r in _manifest(tmp_path / "out")} == {"4x4": 2, "32x": 1}
    _no_hidden_or_temporary(tmp_path / "out")


def _dose_screenshot(path: Path) -> None:
    """An RGB Secondary Capture (like a CT dose report screenshot): an image, but not one to denoise."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "OT", generate_uid()
    ds.set_pixel_data(np.zeros((16, 16, 3), np.uint8), "RGB", 8)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("layout", ["same", "inside", "containing"])
def test_roots_that_could_touch_the_input_are_refused(tmp_path: Path, layout: str) -> None:
    write_phantom_series(tmp_path / "data" / "in", depth=1, size=32)
    inp = tmp_path / "data" / "in"
    out = {"same": inp, "inside": inp / "out", "containing": tmp_path / "data"}[layout]
    with pytest.raises(InputError, match="input root"):
        check_roots(inp, out)
    result = CliRunner().invoke(cli, ["batch", str(inp), str(out), *TINY_ARGS])
    assert result.exit_code == 2 and "input root" in result.output
    assert sorted(p.name for p in inp.iterdir()) == ["IM0001.dcm"]


def test_batch_killed_partway_resumes_and_completes_every_series_once(tmp_path: Path) -> None:
    for seed in range(3):
        write_phantom_series(tmp_path / "in" / f"s{seed}", depth=3, size=32, seed=seed)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "dd_medical.cli", "batch", str(tmp_path / "in"), str(out),
               "--iterations", "80", "--channels", "8", "--blocks", "2", "--ensemble", "1", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (out / MANIFEST_NAME).exists() and any(r["status"] in WRITTEN for r in _manifest(out)):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    at_kill = _manifest(out)
    done_at_kill = {r["key"] for r in at_kill if r["status"] in WRITTEN}
    assert 1 <= len(done_at_kill) < 3, "the kill must land after one series and before the last"

    # What a kill during writing leaves behind (io.atomic's hidden temporary folder): the rerun removes it.
    leftover = out / SERIES_DIR / ".S0123456789abcdef0123.0123456789ab.tmp"
    leftover.mkdir(parents=True, exist_ok=True)
    (leftover / "IM0001.dcm").write_bytes(b"partial")
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode in (0, 3), rerun.stderr[-2000:]  # 3: written, the fidelity check flagged the tiny fits
    assert f"{len(done_at_kill)} skipped" in rerun.stdout
    rows = _manifest(out)
    assert all(r["status"] in WRITTEN for r in rows) and len(rows) == 3
    assert all(r["attempts"] == 1 for r in rows if r["key"] in done_at_kill), "finished series are not redone"
    folders = _series_folders(out)
    assert sorted(f.name for f in folders) == sorted(r["folder"] for r in rows)
    _no_hidden_or_temporary(out)
    for folder in folders:
        assert len(list(folder.iterdir())) == 3
        _check_derived_folder(folder)


def test_a_resumed_run_refits_a_series_only_when_a_setting_that_changes_its_output_changed(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """Through the CLI: the same settings resume without refitting; a changed iteration count (or window) refits,
    with one log line naming the change; a changed batch size (speed and memory only) does not. A row of a manifest
    that did not record these settings is compared on the fit settings it did record (its config column). The fit
    is replaced by a counting identity: only the driver's decision matters here."""
    import logging

    from dd_medical.batch import tasks

    fits: list[int] = []

    def counting(volume, task):
        fits.append(task.config.iterations)
        return volume.array

    monkeypatch.setitem(tasks.TASKS, "denoise", counting)
    write_phantom_series(tmp_path / "in" / "ct", depth=2, size=32, seed=1)
    out = tmp_path / "out"
    base = [arg for arg in TINY_ARGS if arg != "10"]  # TINY_ARGS without its iteration count
    base.remove("--iterations")

    def run(*args: str) -> dict:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dd_medical.batch"):
            result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in"), str(out), *base, *args])
        assert result.exit_code == 0, result.output
        (row,) = _manifest(out)
        return row

    row = run("--iterations", "10")
    assert fits == [10] and row["attempts"] == 1
    assert json.loads(row["output_settings"])["iterations"] == 10
    assert run("--iterations", "10")["attempts"] == 1 and fits == [10]  # (a) same settings: kept
    row = run("--iterations", "12")  # (b) another iteration count: refitted, one line says why
    assert fits == [10, 12] and row["attempts"] == 2
    redo = [r.getMessage() for r in caplog.records if r.getMessage().startswith("redoing")]
    assert redo == [f"redoing {row['key']}: settings changed: iterations 10 -> 12"]
    assert run("--iterations", "12", "--batch-size", "1")["attempts"] == 2 and fits == [10, 12]  # (c): kept
    assert not [r for r in caplog.records if r.getMessage().startswith("redoing")]
    assert run("--iterations", "12", "--window", "-100", "200")["attempts"] == 3  # the window changes the output
    assert len(fits) == 3

    # A row of an older manifest (no output_settings column value): compared on its recorded config.
    with sqlite3.connect(out / MANIFEST_NAME) as conn:
        conn.execute("UPDATE series SET output_settings = NULL")
    conn.close()
    assert run("--iterations", "12")["attempts"] == 3 and len(fits) == 3  # config matches; window unknown: kept
    assert _manifest(out)[0]["output_settings"] is None  # a kept row is not rewritten
    assert run("--iterations", "14")["attempts"] == 4 and fits[-1] == 14  # its config differs: refitted
