"""What one batch task does: read a series, run the engine on it, write its derived series and montage, atomically.

Pure apart from its atomic outputs, so an executor can run it anywhere (here, or as a Ray task); only the driver
writes the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.filereader import read_file_meta_info

from ..api import check, denoise, estimate_noise
from ..core.config import FitConfig
from ..core.intensity import Window
from ..errors import InputError
from ..io import (
    atomic_output_file,
    derivation_description,
    load_series,
    uncertainty_derivation,
    uncertainty_series_description,
    write_series,
    write_uncertainty_series,
)
from ..io.dicom import one_line
from ..pipeline import denoise_volume
from ..report import display_top, write_montage
from ..volume import Volume

log = logging.getLogger(__name__)

SERIES_DIR = "series"
MONTAGE_DIR = "report"
RECEIPT_DIR = "receipts"
SERIES_DESCRIPTION = "Deep Decoder denoised (dd-medical)"
#: Ending of the folder of a series' uncertainty map, beside its denoised series: ``series/S<hash>-uncertainty/``.
UNCERTAINTY_SUFFIX = "-uncertainty"


def uncertainty_folder_name(folder: str) -> str:
    """The folder of the uncertainty series of the denoised series in ``folder`` (``S<hash>-uncertainty``)."""
    return f"{folder}{UNCERTAINTY_SUFFIX}"


def units_of(modality: str) -> str:
    """Units of a volume's values and of its uncertainty map: HU for CT, else stored values."""
    return "HU" if modality == "CT" else "stored values"


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
    uncertainty: bool = False  # also write the uncertainty map's series (uncertainty_dir) and montage tile

    @property
    def uncertainty_dir(self) -> str:
        """Final folder of the uncertainty series, beside :attr:`output_dir` (:func:`uncertainty_folder_name`)."""
        out = Path(self.output_dir)
        return str(out.with_name(uncertainty_folder_name(out.name)))

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
    uncertainty_outputs: int | None = None  # files of the uncertainty series; None: none written
    uncertainty_checksum: str = ""
    uncertainty_median: float | None = None  # median of the map over the volume (HU for CT)
    uncertainty_scale: float | None = None  # the white end of the montage's map tile (HU for CT); black is 0
    transfer_syntax: str = ""  # UID of the transfer syntax the derived series (and its map's) was written in


def _denoise(volume: Volume, task: SeriesTask) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    window = Window(*task.window) if task.window else None
    return denoise(volume.array, config=task.config, device=task.device, window=window, modality=volume.modality,
                   batch_size=task.batch_size, progress=task.progress, uncertainty=task.uncertainty)


def _denoise_slices(volume: Volume, task: SeriesTask, start: int,
                    stop: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Slices ``start:stop`` of the volume denoised exactly as :func:`_denoise` denoises them within the whole
    volume: the volume's window, slice ``i`` fitted with the seeds of ``(config.seed, i)``, and (2.5D) the slabs
    around them fitted to the whole volume's slices (with ``task.uncertainty``, also their uncertainty map)."""
    window = Window(*task.window) if task.window else None
    return denoise_volume(volume.array, task.config, task.device, window=window, modality=volume.modality,
                          batch_size=task.batch_size, progress=task.progress, slices=(start, stop),
                          uncertainty=task.uncertainty)


#: Tasks by name: ``fn(volume, task) -> (D, H, W) float32`` in the volume's units; with ``task.uncertainty``,
#: ``(values, sd)``: the map too, the same shape and units.
TASKS: dict[str, Callable] = {"denoise": _denoise}
#: The same tasks on a range of slices, ``fn(volume, task, start, stop) -> (stop - start, H, W)`` (or a pair, as
#: above), equal to the matching slices of the whole-volume result (so a chunked series equals an unchunked one).
SLICE_TASKS: dict[str, Callable] = {"denoise": _denoise_slices}


def _split(task: SeriesTask, out: object) -> tuple[np.ndarray, np.ndarray | None]:
    """A task function's result as float32 ``(values, sd)`` (``sd`` None without ``task.uncertainty``)."""
    values, sd = out if task.uncertainty else (out, None)
    return np.asarray(values, dtype=np.float32), None if sd is None else np.asarray(sd, dtype=np.float32)


def process_series(task: SeriesTask) -> SeriesResult:
    """Read one volume, run ``task.task`` on it, write its derived series and montage; never raises (except on
    KeyboardInterrupt): a failure becomes ``status="failed"`` with a one-line reason naming the file or UID.

    Its only side effects are atomic outputs: ``task.output_dir`` (replaced as a whole if present, as the driver
    only schedules volumes whose old output is stale), ``task.montage_path`` and, with ``task.uncertainty``,
    ``task.uncertainty_dir``; without it an old uncertainty series of the volume is removed (it would reference the
    replaced series).
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
        values, sd = _split(task, TASKS[task.task](volume, task))
        result.seconds_read, result.seconds_task = t1 - t0, time.perf_counter() - t1
        _write_outputs(task, volume, values, result, sd)
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


def _write_outputs(task: SeriesTask, volume, values: np.ndarray, result: SeriesResult,
                   sd: np.ndarray | None = None) -> None:
    """Write the derived series and montage of ``values`` (D, H, W) (and the uncertainty series of ``sd``, the same
    shape, when given; an old one of a series redone without it is removed), fill ``result`` in as done, then the
    receipt (when ``task.token``)."""
    t2 = time.perf_counter()
    fidelity = check(volume, values)
    if sd is None:  # an uncertainty series of an earlier run would reference the replaced denoised series
        shutil.rmtree(task.uncertainty_dir, ignore_errors=True)
    written = write_series(
        volume.with_array(values), task.output_dir, series_description=SERIES_DESCRIPTION,
        derivation_description=f"{derivation_description(task.config)}; {fidelity.summary()}", org_root=task.org_root,
        overwrite=True, transfer_syntax=task.transfer_syntax,
    )
    middle = volume.shape[0] // 2
    units = units_of(volume.modality)
    if sd is not None:
        uncertain = write_uncertainty_series(
            volume.with_array(sd), task.uncertainty_dir, denoised=task.output_dir, units=units,
            series_description=uncertainty_series_description(SERIES_DESCRIPTION, units),
            derivation_description=uncertainty_derivation(task.config, units), org_root=task.org_root,
            overwrite=True, transfer_syntax=task.transfer_syntax,
        )
        result.uncertainty_outputs = len(uncertain)
        result.uncertainty_checksum = folder_checksum(Path(task.uncertainty_dir))
        result.uncertainty_median = float(np.median(sd))
        result.uncertainty_scale = display_top(sd[middle])
    write_montage(volume.array[middle], values[middle], task.montage_path,
                  uncertainty=None if sd is None else sd[middle], scale=result.uncertainty_scale, units=units)
    result.seconds_write = time.perf_counter() - t2
    result.status, result.slices, result.outputs = "done", volume.shape[0], len(written)
    if not fidelity.passed:
        result.status, result.reason = "check", fidelity.summary()
    result.checksum = folder_checksum(Path(task.output_dir))
    result.transfer_syntax = str(read_file_meta_info(written[0]).TransferSyntaxUID)
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
    row.update(uncertainty_outputs=result.uncertainty_outputs, uncertainty_checksum=result.uncertainty_checksum)
    if result.key != task.key or verify_outputs(row, Path(task.output_dir).parent.parent,
                                                uncertainty=task.uncertainty):
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
    uncertainty: np.ndarray | None = None  # the chunk's uncertainty map (with ``task.uncertainty``)
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
        result.values, result.uncertainty = _split(
            chunk.task, SLICE_TASKS[chunk.task.task](volume, chunk.task, chunk.start, chunk.stop))
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
        sd = np.concatenate([c.uncertainty for c in ordered]) if task.uncertainty else None
        bounds = [0] + [b for c in ordered for b in (c.start, c.stop)] + [volume.shape[0]]
        if bounds[0::2] != bounds[1::2] or values.shape != volume.shape:
            raise InputError(f"chunks of series {task.key} do not cover its {volume.shape[0]} slices in order")
        result.seconds_read = sum(c.seconds_read for c in chunks)
        result.seconds_task = sum(c.seconds_task for c in chunks)
        _write_outputs(task, volume, values, result, sd)
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


def _folder_problem(folder: Path, outputs: int, checksum: str, what: str) -> str:
    if not folder.is_dir():
        return f"{what} folder is missing"
    count = sum(1 for _ in folder.iterdir())
    if count != outputs:
        return f"{what} folder holds {count} files, {outputs} expected"
    if folder_checksum(folder) != checksum:
        return f"{what} files differ from the recorded checksum"
    return ""


def verify_outputs(row: dict, output_root: Path, *, uncertainty: bool = False) -> str:
    """Why the recorded outputs of a ``done`` row are not complete ("" when they are): missing folder, file count
    or checksum different from the manifest's, or a missing montage; the same for the uncertainty series when the
    row records one, and its absence when ``uncertainty`` asks for one."""
    problem = _folder_problem(output_root / SERIES_DIR / row["folder"], row["outputs"], row["checksum"], "output")
    if problem:
        return problem
    if not (output_root / MONTAGE_DIR / f"{row['folder']}.png").is_file():
        return "montage is missing"
    if row.get("uncertainty_outputs") is None:
        return "no uncertainty series (asked for with --uncertainty)" if uncertainty else ""
    return _folder_problem(output_root / SERIES_DIR / uncertainty_folder_name(row["folder"]),
                           row["uncertainty_outputs"], row.get("uncertainty_checksum") or "", "uncertainty series")
