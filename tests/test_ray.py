"""``dd-medical batch --engine ray``: the same outputs as a serial run, slice chunks that change nothing, a killed
worker retried without a duplicate or a leftover, a killed driver resumed from the manifest, and a clear message
when Ray is not installed. Real Ray on loopback (CPU-only tasks), started once for the module."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from dd_medical.batch import (
    MANIFEST_NAME,
    RAY_INSTALL_HINT,
    RECEIPT_DIR,
    SERIES_DIR,
    RayExecutor,
    SeriesTask,
    folder_checksum,
    process_series,
    run_batch,
)
from dd_medical.batch.tasks import SliceChunk
from dd_medical.cli import EXIT_FIDELITY, cli
from dd_medical.core.fit import FitConfig
from dd_medical.io import scan_dicom
from dd_medical.phantom import write_phantom_series

#: Statuses of a series whose outputs are written: "check" when the fidelity check flagged the (tiny) test fits.
WRITTEN = ("done", "check")

REPO = Path(__file__).resolve().parents[1]
TINY = FitConfig(channels=8, blocks=2, iterations=10, ensemble=1, slab=3)  # slabs cross the chunks
NO_RAY_REASON = "Ray is not installed (pip install 'dd-medical[ray]'); the Ray engine tests need it"


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray instance on this machine with 2 CPUs, for the whole module; yields ``(GCS address, hook folder)``.

    Token authentication stays on (the default of a new local instance since Ray 2.5x) with a throwaway token in
    the environment, so nothing is written to ~/.ray/auth_token; drivers started as subprocesses inherit it. The
    hook folder is where :func:`_marking_wrapper`'s tasks mark their workers.
    """
    temp = tempfile.mkdtemp(prefix="ddray", dir="/tmp")  # short: Ray's socket paths must stay < 108 characters
    hooks = Path(temp) / "hooks"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", uuid.uuid4().hex)
        ray = pytest.importorskip("ray", reason=NO_RAY_REASON)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        try:
            yield ray.get_runtime_context().gcs_address, hooks
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _write_inputs(root: Path, count: int, depth: int) -> None:
    for seed in range(count):
        write_phantom_series(root / f"s{seed}", depth=depth, size=32, seed=seed)


def _manifest(out: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{out / MANIFEST_NAME}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM series ORDER BY key")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def _pixels(out: Path) -> dict[str, list[np.ndarray]]:
    """Stored pixel data of every derived series, by output folder, in file order."""
    return {folder.name: [pydicom.dcmread(f).pixel_array for f in sorted(folder.iterdir())]
            for folder in sorted((out / SERIES_DIR).iterdir())}


def _no_leftovers(out: Path) -> None:
    assert not (out / RECEIPT_DIR).exists()
    for path in out.rglob("*"):
        if path.name != ".dd-medical-batch.lock":
            assert not path.name.startswith(".") and ".tmp" not in path.name, f"leftover {path}"


def _same_outputs(a: Path, b: Path) -> None:
    pixels_a, pixels_b = _pixels(a), _pixels(b)
    assert pixels_a.keys() == pixels_b.keys() and pixels_a
    for name in pixels_a:
        assert len(pixels_a[name]) == len(pixels_b[name])
        for x, y in zip(pixels_a[name], pixels_b[name], strict=True):
            np.testing.assert_array_equal(x, y)
    rows_a, rows_b = _manifest(a), _manifest(b)
    # The noise after denoising is measured on the float result before it is stored: equal only if bit-identical.
    assert [(r["key"], r["status"], r["slices"], r["noise_after"]) for r in rows_a] == \
        [(r["key"], r["status"], r["slices"], r["noise_after"]) for r in rows_b]


# ----------------------------------------------------------------------------------------------------------------


def test_ray_batch_equals_serial_and_chunks_change_nothing(ray_cluster: tuple, tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in", count=3, depth=3)
    serial = run_batch(tmp_path / "in", tmp_path / "serial", config=TINY, device="cpu", progress=False)
    ray_run = run_batch(tmp_path / "in", tmp_path / "ray", config=TINY, device="cpu", progress=False,
                        executor=RayExecutor(gpus_per_task=0))
    chunked = run_batch(tmp_path / "in", tmp_path / "chunked", config=TINY, device="cpu", progress=False,
                        executor=RayExecutor(gpus_per_task=0, chunk_slices=2))  # 3 slices: chunks 0-1 and 2

    for summary in (serial, ray_run, chunked):
        assert summary.ok and len(summary.done) == 3 and summary.skipped == [] and summary.report.is_file()
    assert sorted(ray_run.done) == sorted(chunked.done) == sorted(serial.done)
    _same_outputs(tmp_path / "serial", tmp_path / "ray")
    _same_outputs(tmp_path / "serial", tmp_path / "chunked")
    for out in ("ray", "chunked"):
        _no_leftovers(tmp_path / out)
        rows = _manifest(tmp_path / out)
        assert all(r["attempts"] == 1 and r["outputs"] == 3 and r["seconds_task"] > 0 for r in rows)

    # A rerun with the Ray engine verifies and skips, like a serial rerun.
    again = run_batch(tmp_path / "in", tmp_path / "ray", config=TINY, device="cpu", progress=False,
                      executor=RayExecutor(gpus_per_task=0))
    assert again.done == [] and len(again.skipped) == 3


def test_killed_worker_is_retried_and_its_series_completes_once(ray_cluster: tuple, tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in", count=2, depth=2)
    hooks, out = ray_cluster[1], tmp_path / "out"
    hooks.mkdir()  # the tasks mark their worker's PID at start and when finished, and wait 1 s after each mark
    try:
        _run_killing_workers(tmp_path / "in", out, hooks)
    finally:
        shutil.rmtree(hooks)


def _marking_wrapper(hooks: Path, pause: float = 1.0):
    """A ``RayExecutor`` task wrapper: in the worker, write ``<stage>-<folder>[.<start>]-<pid>`` into ``hooks`` at
    "start" and "finished" (so the test can kill that worker there), and sleep ``pause`` seconds after each mark.
    A nested function: Ray's cloudpickle ships it by value."""

    def wrapper(fn, item):
        def mark(stage: str) -> None:
            series = item.task if isinstance(item, SliceChunk) else item
            name = Path(series.output_dir).name + (f".{item.start}" if isinstance(item, SliceChunk) else "")
            Path(hooks, f"{stage}-{name}-{os.getpid()}").write_text(str(os.getpid()))
            time.sleep(pause)

        mark("start")
        result = fn(item)
        mark("finished")
        return result

    return wrapper


def _run_killing_workers(inp: Path, out: Path, hooks: Path) -> None:
    executor = RayExecutor(gpus_per_task=0, max_retries=2, task_wrapper=_marking_wrapper(hooks))
    results: list = []
    driver = threading.Thread(target=lambda: results.append(
        run_batch(inp, out, config=TINY, device="cpu", progress=False, executor=executor)))
    driver.start()

    def marks(stage: str) -> list[tuple[str, int]]:  # (output folder, worker PID)
        return [(p.name.split("-")[1], int(p.name.split("-")[2])) for p in sorted(hooks.glob(f"{stage}-*"))]

    killed: dict[str, tuple[str, int]] = {}
    deadline = time.monotonic() + 120
    while len(killed) < 2 and time.monotonic() < deadline and driver.is_alive():
        if "start" not in killed and marks("start"):
            killed["start"] = marks("start")[0]  # a worker that has not written anything yet
            os.kill(killed["start"][1], signal.SIGKILL)
        finished = [m for m in marks("finished") if "start" in killed and m[0] != killed["start"][0]]
        if "finished" not in killed and finished:
            killed["finished"] = finished[0]  # a worker whose outputs are in place, killed before it reported
            checksum_at_kill = folder_checksum(out / SERIES_DIR / finished[0][0])
            os.kill(finished[0][1], signal.SIGKILL)
        time.sleep(0.02)
    driver.join(timeout=180)
    assert not driver.is_alive() and len(killed) == 2, killed

    (summary,) = results
    assert summary.ok and len(summary.done) == 2 and len(set(summary.done)) == 2
    rows = _manifest(out)
    assert [(r["status"] in WRITTEN, r["attempts"]) for r in rows] == [(True, 1)] * 2, "each series recorded once"
    assert sorted(f.name for f in (out / SERIES_DIR).iterdir()) == sorted(r["folder"] for r in rows)
    for stage, (folder, pid) in killed.items():
        retried = [p for f, p in marks("start") if f == folder and p != pid]
        assert retried, f"the task killed at {stage} was retried in another worker"
    # The retry of the task killed after writing found its outputs (receipt + checksum) and did not redo them.
    finished_folder = killed["finished"][0]
    assert folder_checksum(out / SERIES_DIR / finished_folder) == checksum_at_kill
    assert {r["folder"]: r["checksum"] for r in rows}[finished_folder] == checksum_at_kill
    for folder in (out / SERIES_DIR).iterdir():
        assert len([pydicom.dcmread(f) for f in folder.iterdir()]) == 2
    _no_leftovers(out)


def test_killed_driver_resumes_from_the_manifest(ray_cluster: tuple, tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in", count=3, depth=3)
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "in"), str(out), "--engine", "ray", "--ray-address", ray_cluster[0],
            "--gpus-per-task", "0", "--iterations", "400", "--channels", "8", "--blocks", "2", "--ensemble", "1",
            "--device", "cpu"]
    command = [sys.executable, "-m", "dd_medical.cli", *args]  # a driver of its own, connected to the cluster
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine needs more than 120 s
        while time.monotonic() < deadline and process.poll() is None:
            if (out / MANIFEST_NAME).exists() and any(r["status"] in WRITTEN for r in _manifest(out)):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    done_at_kill = {r["key"] for r in _manifest(out) if r["status"] in WRITTEN}
    assert 1 <= len(done_at_kill) < 3, "the kill must land after one series and before the last"

    rerun = CliRunner().invoke(cli, args)  # the same command again, here (Ray is already connected in this process)
    assert rerun.exit_code in (0, EXIT_FIDELITY), rerun.output
    assert f"{3 - len(done_at_kill)} series done, {len(done_at_kill)} skipped" in rerun.output
    rows = _manifest(out)
    assert all(r["status"] in WRITTEN for r in rows) and len(rows) == 3
    assert all(r["attempts"] == 1 for r in rows if r["key"] in done_at_kill), "finished series are not redone"
    assert sorted(f.name for f in (out / SERIES_DIR).iterdir()) == sorted(r["folder"] for r in rows)
    _no_leftovers(out)


def test_a_retried_task_finds_outputs_its_earlier_attempt_put_in_place(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "in" / "a", depth=2, size=32, seed=3)
    (series,) = scan_dicom(tmp_path / "in").series
    out = tmp_path / "out"
    task = SeriesTask(key=series.key, files=tuple(str(f) for f in series.files), config=TINY, device="cpu",
                      output_dir=str(out / SERIES_DIR / "S1"), montage_path=str(out / "report" / "S1.png"),
                      token="run-1")
    first = process_series(task)
    assert first.status in WRITTEN and task.receipt_path.is_file()
    checksum = folder_checksum(Path(task.output_dir))
    assert process_series(task) == first, "same token: the recorded result, nothing redone"
    assert folder_checksum(Path(task.output_dir)) == checksum
    other_run = process_series(SeriesTask(**{**task.__dict__, "token": "run-2"}))
    assert other_run.status in WRITTEN and other_run.checksum != checksum, "another run's receipt does not count"
    (Path(task.output_dir) / "IM0001.dcm").unlink()  # damaged outputs are never taken as done
    assert process_series(SeriesTask(**{**task.__dict__, "token": "run-2"})).outputs == 2


def test_ray_engine_without_ray_installed_tells_how_to_install_it(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "in" / "a", depth=1, size=32)
    wrapper = ("import sys; sys.modules['ray'] = None; from dd_medical.cli import main; "
               f"sys.argv = ['dd-medical', 'batch', {str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r}, "
               "'--engine', 'ray']; main()")
    result = subprocess.run([sys.executable, "-c", wrapper], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert RAY_INSTALL_HINT in result.stderr and "pip install 'dd-medical[ray]'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()

    serial = CliRunner().invoke(cli, ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--chunk-slices", "4"])
    assert serial.exit_code == 2 and "--chunk-slices only apply with --engine ray" in serial.output
