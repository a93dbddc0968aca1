"""Folder-tree batch runs: every image series under INPUT_ROOT in, one derived series per volume out, resumable.

```python
from dd_medical.batch import run_batch
from dd_medical.fitting import preset

summary = run_batch("export/", "denoised/", config=preset("fast"))
print(summary.format())          # done / skipped / failed with reasons; exit code 0 only when summary.ok
```

Layout of OUTPUT_ROOT::

    manifest.sqlite          one row per volume: status pending/done/failed + reason, timings, noise, checksum
    series/S<hash>/IM0001.dcm  derived DICOM series; the folder name is a hash of "SeriesInstanceUID#split"
    report/S<hash>.png       middle slice before | after | difference
    report.html              summary, per-series table with montages, bad input files with reasons
    receipts/S<hash>.json    only while a Ray run is going: written by a task after its outputs, removed once recorded

The manifest is SQLite (stdlib ``sqlite3``) in WAL mode: every status change is one committed transaction, so a
run killed at any moment leaves a consistent manifest (no torn JSON line to repair), readers (a progress monitor,
a test) can poll it while the run writes, and a future multi-worker driver gets queries by status for free. Only
the driver writes it; :func:`process_series` is pure apart from its atomic outputs, so executors (``serial``, or
``ray``: :class:`RayExecutor`, tasks on a Ray cluster with retries and slice chunks) can run it anywhere. A rerun
skips volumes that are done once their output folder is verified (same file count and SHA-256 checksum as
recorded, same source files), removes temporary leftovers of a killed run and redoes the rest; failed volumes are
retried with ``retry_failed=True``. Messages name UIDs, output folders and input files (relative to INPUT_ROOT)
only, never patient attributes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from .errors import InputError
from .fitting import FitConfig
from .io import atomic_output_file, load_series, scan_dicom, write_series
from .io.dicom import DicomSeries, one_line
from .report import ReportEntry, relative_to, write_montage, write_report

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.sqlite"
SERIES_DIR = "series"
MONTAGE_DIR = "report"
REPORT_NAME = "report.html"
LOCK_NAME = ".dd-medical-batch.lock"
RECEIPT_DIR = "receipts"
SERIES_DESCRIPTION = "Deep Decoder denoised (dd-medical)"
STATUSES = ("pending", "done", "failed")
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8,12}\.(tmp|old)(\.[a-z]+)?$")  # io.atomic's temporary names


# ----------------------------------------------------------------------------------------------------------------
# Work items: what an executor runs


@dataclass(frozen=True)
class SeriesTask:
    """Everything :func:`process_series` needs for one volume (picklable, no open handles)."""

    key: str  # "<SeriesInstanceUID>#<split key>"
    files: tuple[str, ...]  # source files, absolute
    output_dir: str  # final folder of the derived series
    montage_path: str  # final PNG path
    task: str = "denoise"
    config: FitConfig = field(default_factory=FitConfig)
    device: str = "auto"
    batch_size: int | None = None
    window: tuple[float, float] | None = None
    org_root: str | None = None
    progress: bool = False
    slices: int = 0  # number of slices when known before reading (single-frame series), else 0: never chunked
    token: str = ""  # set by the driver for executors that retry tasks: a receipt marks outputs of this run

    @property
    def receipt_path(self) -> Path:
        """``OUTPUT_ROOT/receipts/S<hash>.json``: written after the outputs are in place, removed by the driver."""
        out = Path(self.output_dir)
        return out.parent.parent / RECEIPT_DIR / f"{out.name}.json"


@dataclass
class SeriesResult:
    """What :func:`process_series` reports back to the driver (times in seconds, noise in HU for CT)."""

    key: str
    status: str  # "done" or "failed"
    reason: str = ""
    slices: int = 0
    outputs: int = 0
    checksum: str = ""
    seconds_read: float | None = None
    seconds_task: float | None = None
    seconds_write: float | None = None
    noise_before: float | None = None
    noise_after: float | None = None


def _denoise(volume, task: SeriesTask) -> np.ndarray:
    return _denoise_slices(volume, task, 0, volume.array.shape[0])


def _denoise_slices(volume, task: SeriesTask, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` of the volume denoised exactly as :func:`_denoise` denoises them within the whole
    volume: the volume's window, slice ``i`` fitted with the seeds of ``(config.seed, i)``, and (2.5D) the slabs
    around them fitted to the whole volume's slices."""
    from .intensity import Window
    from .pipeline import denoise_volume

    window = Window(*task.window) if task.window else None
    return denoise_volume(
        volume.array, task.config, task.device, task.progress, window=window, modality=volume.modality,
        batch_size=task.batch_size, subset=(start, stop),
    )


#: Tasks by name: ``fn(volume, task) -> (D, H, W) float32`` in the volume's units.
TASKS: dict[str, Callable] = {"denoise": _denoise}
#: The same tasks on a range of slices, ``fn(volume, task, start, stop) -> (stop - start, H, W)``, equal to the
#: matching slices of the whole-volume result (so a chunked series equals an unchunked one).
SLICE_TASKS: dict[str, Callable] = {"denoise": _denoise_slices}


def process_series(task: SeriesTask) -> SeriesResult:
    """Read one volume, run ``task.task`` on it, write its derived series and montage; never raises (except on
    KeyboardInterrupt): a failure becomes ``status="failed"`` with a one-line reason naming the file or UID.

    Its only side effects are atomic outputs: ``task.output_dir`` (replaced as a whole if present, as the driver
    only schedules volumes whose old output is stale) and ``task.montage_path``.
    """
    if task.token:
        earlier = completed_earlier(task)
        if earlier is not None:
            log.info("outputs of %s were already written by an earlier attempt of this task", task.key)
            return earlier
    result = SeriesResult(key=task.key, status="failed")
    with _recording_failure(result):
        t0 = time.perf_counter()
        volume = load_series(task.files)
        t1 = time.perf_counter()
        values = np.asarray(TASKS[task.task](volume, task), dtype=np.float32)
        result.seconds_read, result.seconds_task = t1 - t0, time.perf_counter() - t1
        _write_outputs(task, volume, values, result)
    return result


@contextlib.contextmanager
def _recording_failure(result: SeriesResult | ChunkResult) -> Iterator[None]:
    """Turn any exception but KeyboardInterrupt into ``result.reason`` (one line naming the file or UID)."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except InputError as err:
        result.reason = str(err)
    except Exception as err:  # one series failing never stops the others; the driver records why
        result.reason = f"{type(err).__name__}: {one_line(err)}"


def _write_outputs(task: SeriesTask, volume, values: np.ndarray, result: SeriesResult) -> None:
    """Write the derived series and montage of ``values`` (D, H, W), fill ``result`` in as done, then the receipt
    (when ``task.token``)."""
    from .api import derivation_description
    from .noise import estimate_sigma

    t2 = time.perf_counter()
    written = write_series(
        volume.with_array(values), task.output_dir, series_description=SERIES_DESCRIPTION,
        derivation_description=derivation_description(task.config), org_root=task.org_root, overwrite=True,
    )
    middle = volume.shape[0] // 2
    write_montage(volume.array[middle], values[middle], task.montage_path)
    result.seconds_write = time.perf_counter() - t2
    result.status, result.slices, result.outputs = "done", volume.shape[0], len(written)
    result.checksum = folder_checksum(Path(task.output_dir))
    result.noise_before = float(estimate_sigma(volume.array[:, None]).median())
    result.noise_after = float(estimate_sigma(values[:, None]).median())
    if task.token:
        with atomic_output_file(task.receipt_path, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"token": task.token, "result": asdict(result)}))


def completed_earlier(task: SeriesTask) -> SeriesResult | None:
    """The result recorded in ``task``'s receipt when an earlier attempt with the same token (a task retried after
    its worker died) already put complete outputs in place (file count, checksum and montage verified), else None.
    """
    try:
        receipt = json.loads(task.receipt_path.read_text())
    except (OSError, ValueError):
        return None
    if receipt.get("token") != task.token:
        return None
    result = SeriesResult(**receipt["result"])
    row = {"folder": Path(task.output_dir).name, "outputs": result.outputs, "checksum": result.checksum}
    if result.key != task.key or verify_outputs(row, Path(task.output_dir).parent.parent):
        return None
    return result


# ----------------------------------------------------------------------------------------------------------------
# Slice chunks of a large series (run as separate tasks, reassembled and written once by the driver)


@dataclass(frozen=True)
class SliceChunk:
    """Slices ``start:stop`` (0-based, in geometry order) of ``task``'s volume."""

    task: SeriesTask
    start: int
    stop: int


@dataclass
class ChunkResult:
    """The denoised slices of a :class:`SliceChunk`, ``values`` (stop - start, H, W) float32; None if it failed."""

    key: str
    start: int
    stop: int
    values: np.ndarray | None = None
    reason: str = ""
    seconds_read: float = 0.0
    seconds_task: float = 0.0


def split_chunks(task: SeriesTask, chunk_slices: int | None) -> list[SliceChunk]:
    """Consecutive chunks of at most ``chunk_slices`` slices; none (run the series whole) when the series is not
    larger than that, its slice count is unknown (multi-frame objects), or ``chunk_slices`` is None."""
    if not chunk_slices or task.slices <= chunk_slices:
        return []
    return [SliceChunk(task, a, min(task.slices, a + chunk_slices)) for a in range(0, task.slices, chunk_slices)]


def process_chunk(chunk: SliceChunk) -> ChunkResult:
    """Read the chunk's volume and run its task on slices ``start:stop``; never raises (like :func:`process_series`).
    Writes nothing: the driver reassembles the chunks and writes the series once (:func:`finish_chunks`)."""
    result = ChunkResult(key=chunk.task.key, start=chunk.start, stop=chunk.stop)
    with _recording_failure(result):
        t0 = time.perf_counter()
        volume = load_series(chunk.task.files)
        if chunk.stop > volume.shape[0]:
            raise InputError(f"series {chunk.task.key} has {volume.shape[0]} slices, not {chunk.task.slices}")
        t1 = time.perf_counter()
        values = SLICE_TASKS[chunk.task.task](volume, chunk.task, chunk.start, chunk.stop)
        result.values = np.asarray(values, dtype=np.float32)
        result.seconds_read, result.seconds_task = t1 - t0, time.perf_counter() - t1
    return result


def finish_chunks(task: SeriesTask, chunks: Sequence[ChunkResult]) -> SeriesResult:
    """Reassemble the chunks of one series in slice order and write its outputs once; never raises. A failed chunk
    fails the series (with the chunk's reason) and nothing is written."""
    result = SeriesResult(key=task.key, status="failed")
    failed = [c for c in chunks if c.values is None]
    if failed:
        result.reason = f"slices {failed[0].start}-{failed[0].stop - 1}: {failed[0].reason}"
        return result
    with _recording_failure(result):
        ordered = sorted(chunks, key=lambda c: c.start)
        volume = load_series(task.files)
        values = np.concatenate([c.values for c in ordered])
        bounds = [0] + [b for c in ordered for b in (c.start, c.stop)] + [volume.shape[0]]
        if bounds[0::2] != bounds[1::2] or values.shape != volume.shape:
            raise InputError(f"chunks of series {task.key} do not cover its {volume.shape[0]} slices in order")
        result.seconds_read = sum(c.seconds_read for c in chunks)
        result.seconds_task = sum(c.seconds_task for c in chunks)
        _write_outputs(task, volume, values, result)
    return result


def folder_checksum(folder: Path) -> str:
    """SHA-256 over the names and contents of the files in ``folder`` (sorted by name)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Executors


class Executor(Protocol):
    """Runs :func:`process_series` over tasks and yields results as they finish (any order).

    An executor that may run a task more than once (retries after a worker died) sets ``uses_receipts = True``:
    the driver then gives every task of the run a token, and a repeated task returns the result of an earlier
    attempt whose outputs are complete instead of writing them again (:func:`completed_earlier`).
    """

    def map(self, fn: Callable[[SeriesTask], SeriesResult], tasks: Sequence[SeriesTask]) -> Iterator[SeriesResult]:
        ...


class SerialExecutor:
    """One task after the other in this process (slice progress bars shown)."""

    def map(self, fn: Callable[[SeriesTask], SeriesResult], tasks: Sequence[SeriesTask]) -> Iterator[SeriesResult]:
        for task in tasks:
            yield fn(task)


RAY_INSTALL_HINT = "the ray engine needs Ray, which is not installed: pip install 'dd-medical[ray]'"
TASK_HOOK_DIR_ENV = "DD_MEDICAL_TASK_HOOK_DIR"  # tests: Ray tasks mark "<stage>-<folder>-<pid>" there if it exists
TASK_HOOK_SLEEP_ENV = "DD_MEDICAL_TASK_HOOK_SLEEP"  # tests: seconds a task waits after each mark


def import_ray():
    """The ``ray`` module; :class:`InputError` telling how to install it when it cannot be imported."""
    try:
        import ray
    except ImportError as err:
        raise InputError(RAY_INSTALL_HINT) from err
    return ray


def _task_hook(stage: str, task: SeriesTask | SliceChunk) -> None:
    """Test hook, inactive unless ``DD_MEDICAL_TASK_HOOK_DIR`` names an existing folder in the worker: mark this
    worker's PID at ``stage`` ("start", "finished") so a test can kill it there; then sleep
    ``DD_MEDICAL_TASK_HOOK_SLEEP`` seconds."""
    hook_dir = os.environ.get(TASK_HOOK_DIR_ENV)
    if not hook_dir or not os.path.isdir(hook_dir):
        return
    series = task.task if isinstance(task, SliceChunk) else task
    name = Path(series.output_dir).name + (f".{task.start}" if isinstance(task, SliceChunk) else "")
    Path(hook_dir, f"{stage}-{name}-{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get(TASK_HOOK_SLEEP_ENV, "0")))


def _run_in_worker(fn: Callable, item: SeriesTask | SliceChunk):
    """What a Ray task runs: ``fn(item)`` between the test hook's marks."""
    _task_hook("start", item)
    result = fn(item)
    _task_hook("finished", item)
    return result


class RayExecutor:
    """Series (or slice chunks of large series) as Ray tasks, results streamed back as they finish (``ray.wait``).

    Args:
        address: ``None`` (``ray.init()``: ``RAY_ADDRESS`` or a new local instance using every GPU of this
            machine), ``"auto"`` (the cluster started with ``ray start`` here) or ``"ray://host:port"`` (Ray Client).
            Ignored when Ray is already initialised in this process.
        gpus_per_task: GPUs a task reserves; fractional (0.25: four series share a GPU); 0 for CPU-only tasks.
            ``None``: 1 when the cluster has GPUs and the tasks' device is not ``"cpu"``, else 0.
        cpus_per_task: CPUs a task reserves (also its torch thread count, which Ray sets through OMP_NUM_THREADS).
        max_retries: times a task is rerun after its worker died (killed, out of host memory, node lost).
        chunk_slices: split series with more slices than this into chunks of this many, one task each; the driver
            reassembles them in order and writes the series once. ``None``: one task per series.
        runtime_env: Ray runtime environment of the tasks (e.g. ``{"env_vars": {...}}``, ``{"pip": [...]}``).

    Only the driver writes the manifest. Every task writes its outputs atomically, then a receipt; a task retried
    after its worker died once its outputs were in place finds the receipt, verifies the outputs and returns the
    recorded result without redoing (or duplicating) anything. Task results do not depend on the executor: a
    series gives the same pixels here as with :class:`SerialExecutor` (per-slice seeds).
    """

    uses_receipts = True

    def __init__(self, address: str | None = None, *, gpus_per_task: float | None = None, cpus_per_task: float = 1.0,
                 max_retries: int = 3, chunk_slices: int | None = None, runtime_env: dict | None = None) -> None:
        if min(gpus_per_task or 0, cpus_per_task, max_retries) < 0 or (chunk_slices or 1) < 1:
            raise InputError("gpus/cpus per task and retries must be >= 0, chunk slices >= 1")
        self.ray = import_ray()
        self.address, self.gpus_per_task, self.cpus_per_task = address, gpus_per_task, cpus_per_task
        self.max_retries, self.chunk_slices, self.runtime_env = max_retries, chunk_slices, runtime_env

    def map(self, fn: Callable[[SeriesTask], SeriesResult], tasks: Sequence[SeriesTask]) -> Iterator[SeriesResult]:
        ray = self.ray
        if not tasks:
            return
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, log_to_driver=False)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = self.gpus_per_task
        if gpus is None:
            gpus = 1.0 if cluster_gpus and tasks[0].device != "cpu" else 0.0
        elif gpus > 0 and not cluster_gpus:
            log.warning("tasks ask for %g GPU but the Ray cluster has none (yet): they wait until a GPU node joins",
                        gpus)
        log.info("Ray cluster: %s; %g CPU and %g GPU per task", ray.cluster_resources(), self.cpus_per_task, gpus)
        options = dict(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.max_retries,
                       retry_exceptions=False)
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        remote = ray.remote(_run_in_worker).options(**options)
        pending: dict = {}  # ObjectRef -> (task, chunk start or None)
        chunks: dict[str, list[ChunkResult]] = {}
        expected: dict[str, int] = {}
        try:
            for task in tasks:
                parts = split_chunks(task, self.chunk_slices)
                expected[task.key] = len(parts)
                chunks[task.key] = []
                for part in parts:
                    pending[remote.remote(process_chunk, part)] = (task, part)
                if not parts:
                    pending[remote.remote(fn, task)] = (task, None)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task, part = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayError as err:  # retries used up: worker died, node lost, ...
                        reason = f"{type(err).__name__}: {one_line(err)}"
                        value = (SeriesResult(key=task.key, status="failed", reason=reason) if part is None else
                                 ChunkResult(key=task.key, start=part.start, stop=part.stop, reason=reason))
                    if part is None:
                        yield value
                        continue
                    chunks[task.key].append(value)
                    if len(chunks[task.key]) == expected[task.key]:
                        yield finish_chunks(task, chunks.pop(task.key))
        finally:
            for ref in pending:  # interrupted: stop what is still running (its outputs are atomic)
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


#: Executors by name (``--engine``), each built with its default settings.
EXECUTORS: dict[str, Callable[[], Executor]] = {"serial": SerialExecutor, "ray": RayExecutor}


# ----------------------------------------------------------------------------------------------------------------
# Manifest (written by the driver only)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    key TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    split_key TEXT NOT NULL,
    folder TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    n_files INTEGER NOT NULL,
    source_digest TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    reason TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    slices INTEGER,
    outputs INTEGER,
    checksum TEXT,
    seconds_read REAL,
    seconds_task REAL,
    seconds_write REAL,
    noise_before REAL,
    noise_after REAL,
    excluded TEXT NOT NULL DEFAULT '[]',
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped_files (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


class Manifest:
    """The SQLite manifest of a batch output folder (WAL journal; each change its own transaction)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, timeout=60)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        with self.conn:
            self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, name: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def get(self, key: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM series WHERE key = ?", (key,)).fetchone()
        return None if row is None else dict(row)

    def rows(self) -> list[dict]:
        """All series rows, ordered by key."""
        return [dict(r) for r in self.conn.execute("SELECT * FROM series ORDER BY key")]

    def schedule(self, item: _Planned, task: str, config: FitConfig) -> None:
        """Insert or reset ``item`` to ``pending`` (kept counters: attempts)."""
        with self.conn:
            self.conn.execute(
                """INSERT INTO series (key, series_uid, split_key, folder, modality, n_files, source_digest, status,
                       reason, task, config, excluded, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', '', ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET folder=excluded.folder, modality=excluded.modality,
                       n_files=excluded.n_files, source_digest=excluded.source_digest, status='pending', reason='',
                       task=excluded.task, config=excluded.config, excluded=excluded.excluded,
                       updated=excluded.updated""",
                (item.key, item.series.series_uid, item.series.split_key, item.folder, item.series.modality,
                 len(item.series.files), item.source_digest, task, json.dumps(asdict(config)),
                 json.dumps(item.excluded), _now()),
            )

    def record(self, result: SeriesResult) -> None:
        with self.conn:
            self.conn.execute(
                """UPDATE series SET status=?, reason=?, attempts=attempts+1, slices=?, outputs=?, checksum=?,
                       seconds_read=?, seconds_task=?, seconds_write=?, noise_before=?, noise_after=?, updated=?
                   WHERE key=?""",
                (result.status, result.reason, result.slices, result.outputs, result.checksum, result.seconds_read,
                 result.seconds_task, result.seconds_write, result.noise_before, result.noise_after, _now(),
                 result.key),
            )

    def set_skipped_files(self, files: Iterable[tuple[str, str]]) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM skipped_files")
            self.conn.executemany("INSERT OR REPLACE INTO skipped_files VALUES (?, ?)", list(files))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ----------------------------------------------------------------------------------------------------------------
# Driver


@dataclass
class _Planned:
    series: DicomSeries
    key: str
    folder: str
    source_digest: str
    excluded: list[tuple[str, str]]


@dataclass
class BatchSummary:
    """The outcome of :func:`run_batch`. Lists hold series keys (UIDs) and input paths relative to INPUT_ROOT."""

    output_root: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # done in an earlier run, outputs verified
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    report: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether every series succeeded (now or in an earlier run)."""
        return not self.failed

    def format(self) -> str:
        """A few lines for the terminal: counts, then each failure and each bad file with its reason."""
        lines = [
            f"{len(self.done)} series done, {len(self.skipped)} skipped (done earlier), {len(self.failed)} failed; "
            f"{len(self.bad_files)} input files not processed; report: {self.report}"
        ]
        lines += [f"failed {key}: {reason}" for key, reason in self.failed]
        lines += [f"not processed {name}: {reason}" for name, reason in self.bad_files]
        return "\n".join(lines)


def output_folder_name(key: str) -> str:
    """Output folder of a series: ``S`` + 20 hex digits of SHA-256 of its key (UIDs only, never free text)."""
    return "S" + hashlib.sha256(key.encode()).hexdigest()[:20]


def check_roots(input_root: str | Path, output_root: str | Path) -> tuple[Path, Path]:
    """Resolved ``(input_root, output_root)``; :class:`InputError` when the input is not a folder or the two are
    the same folder or one lies inside the other (inputs are never modified)."""
    inp, out = Path(input_root).resolve(), Path(output_root).resolve()
    if not inp.is_dir():
        raise InputError("input root is not an existing folder", input_root)
    if out == inp:
        raise InputError("output root is the input root (inputs are never modified)", output_root)
    if inp in out.parents:
        raise InputError(f"output root lies inside the input root {inp} (inputs are never modified)", output_root)
    if out in inp.parents:
        raise InputError(f"output root contains the input root {inp} (inputs are never modified)", output_root)
    if out.exists() and not out.is_dir():
        raise InputError("output root exists and is not a folder", output_root)
    return inp, out


@contextlib.contextmanager
def _exclusive(output_root: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUTPUT_ROOT for the run (released by the OS even if the process is killed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(output_root / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise InputError("another batch run is writing to this output root", output_root) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(output_root: Path) -> None:
    """Temporary folders/files of a killed run (io.atomic's ``.<name>.<hex>.tmp`` names); we hold the lock."""
    for sub in (output_root / SERIES_DIR, output_root / MONTAGE_DIR, output_root):
        if not sub.is_dir():
            continue
        for path in sub.iterdir():
            if _TEMP_NAME.match(path.name):
                log.info("removing leftover of an interrupted run: %s", path.relative_to(output_root))
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _source_digest(files: Sequence[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{relative_to(path, root)}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()


def verify_outputs(row: dict, output_root: Path) -> str:
    """Why the recorded outputs of a ``done`` row are not complete ("" when they are): missing folder, file count
    or checksum different from the manifest's, or a missing montage."""
    folder = output_root / SERIES_DIR / row["folder"]
    if not folder.is_dir():
        return "output folder is missing"
    count = sum(1 for _ in folder.iterdir())
    if count != row["outputs"]:
        return f"output folder holds {count} files, {row['outputs']} expected"
    if folder_checksum(folder) != row["checksum"]:
        return "output files differ from the recorded checksum"
    if not (output_root / MONTAGE_DIR / f"{row['folder']}.png").is_file():
        return "montage is missing"
    return ""


def run_batch(
    input_root: str | Path,
    output_root: str | Path,
    *,
    task: str = "denoise",
    config: FitConfig | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    window: tuple[float, float] | None = None,
    org_root: str | None = None,
    retry_failed: bool = False,
    executor: str | Executor = "serial",
    progress: bool = True,
) -> BatchSummary:
    """Run ``task`` on every image volume under ``input_root``; derived series, manifest and report go to
    ``output_root`` (see the module docstring for the layout). Resumable: volumes done earlier are skipped once
    their outputs are verified, failed ones are retried only with ``retry_failed``.

    Args:
        input_root: folder tree of DICOM files (any names); never modified.
        output_root: created if needed; must not be, lie inside, or contain ``input_root``.
        task: a name in :data:`TASKS` (``"denoise"``).
        config, device, batch_size, window: as for :func:`dd_medical.pipeline.denoise_volume`.
        org_root: UID prefix of the derived series (default: ``2.25.`` UUID-derived UIDs).
        retry_failed: redo volumes that failed in an earlier run.
        executor: a name in :data:`EXECUTORS` (``"serial"``, ``"ray"``) or an :class:`Executor` such as
            ``RayExecutor(address, gpus_per_task=0.5, chunk_slices=64)``.
        progress: tqdm bars for series and slices.

    Returns a :class:`BatchSummary`; raises :class:`InputError` only for problems with the roots themselves.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    config = config or FitConfig()
    runner = EXECUTORS[executor]() if isinstance(executor, str) else executor
    inp, out = check_roots(input_root, output_root)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        manifest = Manifest(out / MANIFEST_NAME)
        try:
            return _run(inp, out, manifest, task, config, device, batch_size, window, org_root, retry_failed,
                        runner, progress)
        finally:
            manifest.close()


def _run(inp: Path, out: Path, manifest: Manifest, task: str, config: FitConfig, device: str,
         batch_size: int | None, window: tuple[float, float] | None, org_root: str | None, retry_failed: bool,
         runner: Executor, progress: bool) -> BatchSummary:
    recorded_root = manifest.meta("input_root")
    if recorded_root is not None and recorded_root != str(inp):
        raise InputError(f"output root holds the batch of another input root ({recorded_root})", out)
    manifest.set_meta("input_root", str(inp))
    _remove_leftovers(out)
    shutil.rmtree(out / RECEIPT_DIR, ignore_errors=True)  # receipts of an interrupted run: its tokens are void
    token = uuid.uuid4().hex if getattr(runner, "uses_receipts", False) else ""

    scan = scan_dicom(inp, strict=False)
    summary = BatchSummary(output_root=out)
    summary.bad_files = [(relative_to(s.path, inp), s.reason) for s in scan.skipped]

    planned: list[_Planned] = []
    for series in scan.series:
        if series.samples_per_pixel != 1:  # e.g. a dose-report screenshot: an image, but nothing to denoise
            reason = f"colour image ({series.samples_per_pixel} samples per pixel) of series {series.key}: not denoised"
            summary.bad_files += [(relative_to(path, inp), reason) for path in series.files]
            continue
        key = series.key
        planned.append(_Planned(
            series=series, key=key, folder=output_folder_name(key),
            source_digest=_source_digest(series.files, inp),
            excluded=[(relative_to(e.path, inp), e.reason) for e in series.excluded],
        ))

    manifest.set_skipped_files(summary.bad_files)
    for name, reason in summary.bad_files:
        log.warning("not processed %s: %s", name, reason)

    tasks: list[SeriesTask] = []
    for item in planned:
        row = manifest.get(item.key)
        if row is not None and row["status"] == "done":
            problem = "" if row["source_digest"] == item.source_digest else "source files changed"
            problem = problem or verify_outputs(row, out)
            if not problem:
                summary.skipped.append(item.key)
                continue
            log.warning("redoing %s: %s", item.key, problem)
        elif row is not None and row["status"] == "failed" and not retry_failed:
            summary.failed.append((item.key, f"failed in an earlier run (use --retry-failed): {row['reason']}"))
            continue
        manifest.schedule(item, task, config)
        tasks.append(SeriesTask(
            key=item.key, files=tuple(str(p) for p in item.series.files),
            output_dir=str(out / SERIES_DIR / item.folder), montage_path=str(out / MONTAGE_DIR / f"{item.folder}.png"),
            task=task, config=config, device=device, batch_size=batch_size, window=window, org_root=org_root,
            progress=progress, slices=0 if item.series.multiframe else len(item.series.files), token=token,
        ))

    bar = tqdm(total=len(tasks), unit="series", desc="series", disable=not progress)
    try:
        for result in runner.map(process_series, tasks):
            manifest.record(result)
            if token:
                (out / RECEIPT_DIR / f"{output_folder_name(result.key)}.json").unlink(missing_ok=True)
            if result.status == "done":
                summary.done.append(result.key)
                log.info("done %s (%d slices)", result.key, result.slices)
            else:
                summary.failed.append((result.key, result.reason))
                log.warning("failed %s: %s", result.key, result.reason)
            bar.update(1)
    finally:
        bar.close()
    _remove_leftovers(out)  # temporary folders of tasks whose worker was killed (the task was retried)
    with contextlib.suppress(OSError):
        (out / RECEIPT_DIR).rmdir()

    summary.report = _write_report(out, manifest, planned, summary)
    return summary


def _write_report(out: Path, manifest: Manifest, planned: list[_Planned], summary: BatchSummary) -> Path:
    skipped = set(summary.skipped)
    entries = []
    for item in planned:
        row = manifest.get(item.key) or {}
        montage = out / MONTAGE_DIR / f"{item.folder}.png"
        entries.append(ReportEntry(
            key=item.key, folder=f"{SERIES_DIR}/{item.folder}", modality=item.series.modality,
            status=row.get("status", "pending"), reason=row.get("reason", "") or "", slices=row.get("slices") or 0,
            seconds_read=row.get("seconds_read"), seconds_task=row.get("seconds_task"),
            seconds_write=row.get("seconds_write"), noise_before=row.get("noise_before"),
            noise_after=row.get("noise_after"),
            montage=f"{MONTAGE_DIR}/{montage.name}" if row.get("status") == "done" and montage.is_file() else "",
            excluded=item.excluded, skipped_now=item.key in skipped,
        ))
    return write_report(out / REPORT_NAME, entries, summary.bad_files)
