"""What one batch task does: read a series, run the engine on it, write its derived series and montage, atomically.

Pure apart from its atomic outputs, so an executor can run it anywhere (here, or as a Ray task); only the driver
writes the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..api import check, denoise, estimate_noise
from ..core.config import FitConfig
from ..core.intensity import Window
from ..errors import InputError
from ..io import atomic_output_file, derivation_description, load_series, write_series
from ..io.dicom import one_line
from ..pipeline import denoise_volume
from ..report import write_montage
from ..volume import Volume

log = logging.getLogger(__name__)

SERIES_DIR = "series"
MONTAGE_DIR = "report"
RECEIPT_DIR = "receipts"
SERIES_DESCRIPTION = "Deep Decoder denoised (dd-medical)"


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
    transfer_syntax: str | None = None  # derived series: None/"auto" (a lossless source's), a name or a UID
    progress: bool | None = False  # slice bars: None on a terminal only (pipeline.Progress)
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
    status: str  # "done", "check" (done, but the fidelity check flagged a slice; see reason) or "failed"
    reason: str = ""
    slices: int = 0
    outputs: int = 0
    checksum: str = ""
    seconds_read: float | None = None
    seconds_task: float | None = None
    seconds_write: float | None = None
    noise_before: float | None = None
    noise_after: float | None = None


def _denoise(volume: Volume, task: SeriesTask) -> np.ndarray:
    window = Window(*task.window) if task.window else None
    return denoise(volume.array, config=task.config, device=task.device, window=window, modality=volume.modality,
                   batch_size=task.batch_size, progress=task.progress)


def _denoise_slices(volume: Volume, task: SeriesTask, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` of the volume denoised exactly as :func:`_denoise` denoises them within the whole
    volume: the volume's window, slice ``i`` fitted with the seeds of ``(config.seed, i)``, and (2.5D) the slabs
    around them fitted to the whole volume's slices."""
    window = Window(*task.window) if task.window else None
    return denoise_volume(volume.array, task.config, task.device, window=window, modality=volume.modality,
                          batch_size=task.batch_size, progress=task.progress, slices=(start, stop))


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
    t2 = time.perf_counter()
    fidelity = check(volume, values)
    written = write_series(
        volume.with_array(values), task.output_dir, series_description=SERIES_DESCRIPTION,
        derivation_description=f"{derivation_description(task.config)}; {fidelity.summary()}", org_root=task.org_root,
        overwrite=True, transfer_syntax=task.transfer_syntax,
    )
    middle = volume.shape[0] // 2
    write_montage(volume.array[middle], values[middle], task.montage_path)
    result.seconds_write = time.perf_counter() - t2
    result.status, result.slices, result.outputs = "done", volume.shape[0], len(written)
    if not fidelity.passed:
        result.status, result.reason = "check", fidelity.summary()
    result.checksum = folder_checksum(Path(task.output_dir))
    result.noise_before = fidelity.noise
    result.noise_after = estimate_noise(values)
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
