"""The batch driver: scan INPUT_ROOT, plan what to (re)do against the manifest, run the tasks through an executor,
record every result, write the report. Resumable; INPUT_ROOT is never modified."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from tqdm import tqdm

from ..core.config import FitConfig
from ..errors import InputError
from ..io import resolve_transfer_syntax, scan_dicom
from ..io.dicom import DicomSeries
from ..io.transfer_syntax import AUTO, derived_transfer_syntax
from ..presets import resolve
from ..report import ReportEntry, relative_to, write_report
from .executors import EXECUTORS, Executor
from .manifest import MANIFEST_NAME, Manifest
from .tasks import (
    MONTAGE_DIR,
    RECEIPT_DIR,
    SERIES_DIR,
    TASKS,
    SeriesResult,
    SeriesTask,
    process_series,
    uncertainty_folder_name,
    verify_outputs,
)

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
LOCK_NAME = ".dd-medical-batch.lock"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8,12}\.(tmp|old)(\.[a-z]+)?$")  # io.atomic's temporary names


@dataclass
class Planned:
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
    flagged: list[tuple[str, str]] = field(default_factory=list)  # written, but the fidelity check flagged a slice
    report: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether every series succeeded (now or in an earlier run); flagged series count as written."""
        return not self.failed

    def format(self) -> str:
        """A few lines for the terminal: counts, then each failure, each flagged series and each bad file."""
        lines = [
            f"{len(self.done)} series done, {len(self.skipped)} skipped (done earlier), {len(self.failed)} failed, "
            f"{len(self.flagged)} flagged by the fidelity check; {len(self.bad_files)} input files not processed; "
            f"report: {self.report}"
        ]
        lines += [f"failed {key}: {reason}" for key, reason in self.failed]
        lines += [f"flagged {key}: {reason}" for key, reason in self.flagged]
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


def _transfer_syntax_problem(row: dict, files: Sequence[Path], chosen: UID | None) -> str:
    """Why the outputs of a finished series are not in the transfer syntax this run writes (``chosen``; ``None``:
    auto), "" when they are. Checked only when the setting changed (the setting's UID, or for auto the syntax it
    gives the series' source files); a row that does not record its syntax (an older manifest) is kept."""
    written = row.get("transfer_syntax")
    if not written or row.get("transfer_syntax_setting") == str(chosen or AUTO):
        return ""
    expected = chosen or derived_transfer_syntax(None, [_file_transfer_syntax(path) for path in files])
    return "" if expected == written else f"written as {UID(written).name}, this run writes {expected.name}"


#: FitConfig fields that change only speed, never the values written (like the batch size and the device, which are
#: not recorded either): a resumed run that changes them keeps finished series.
SPEED_ONLY_FIELDS = ("compile",)


def output_settings(task: str, config: FitConfig, modality: str, window: tuple[float, float] | None,
                    org_root: str | None) -> dict:
    """The settings that decide a series' output, as recorded in the manifest: the task, every field of the
    resolved ``config`` but :data:`SPEED_ONLY_FIELDS`, the series' modality, the window ((low, high) in HU, or
    None: the series' own) and the UID root of the derived series. A flat JSON-able dict (the window a list)."""
    fields = {name: value for name, value in asdict(config).items() if name not in SPEED_ONLY_FIELDS}
    settings = {**fields, "task": task, "modality": modality, "window": None if window is None else list(window),
                "org_root": org_root}
    return json.loads(json.dumps(settings))


def _settings_problem(row: dict, settings: dict) -> str:
    """Which recorded settings of a finished series differ from this run's ``settings`` (:func:`output_settings`),
    "" when none does. Only names recorded on both sides are compared. A row of a manifest that predates the
    ``output_settings`` column is compared on the fit settings it did record (its ``config`` column); the window
    and UID root it does not record count as unchanged."""
    try:
        recorded = json.loads(row.get("output_settings") or row.get("config") or "{}")
    except ValueError:
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    changed = [f"{name} {recorded[name]} -> {value}" for name, value in settings.items()
               if name in recorded and name not in SPEED_ONLY_FIELDS and recorded[name] != value]
    return f"settings changed: {', '.join(changed)}" if changed else ""


def _file_transfer_syntax(path: Path) -> str:
    """The transfer syntax UID in a file's meta information ("" without one: a bare, uncompressed data set)."""
    try:
        return str(read_file_meta_info(path).get("TransferSyntaxUID", "") or "")
    except (OSError, EOFError, InvalidDicomError):
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
    progress: bool | None = None,
    transfer_syntax: str | None = None,
    uncertainty: bool = False,
) -> BatchSummary:
    """Run ``task`` on every image volume under ``input_root``; derived series, manifest and report go to
    ``output_root`` (see the module docstring for the layout). Resumable: volumes done earlier are skipped once
    their outputs are verified, failed ones are retried only with ``retry_failed``. A volume done earlier with other
    settings than this run's (:func:`output_settings`: the config but :data:`SPEED_ONLY_FIELDS`, the window, the UID
    root) is redone, with one log line naming the changed settings; ``device``, ``batch_size`` and the executor
    change only speed and memory, so changing them keeps finished volumes.

    Args:
        input_root: folder tree of DICOM files (any names); never modified.
        output_root: created if needed; must not be, lie inside, or contain ``input_root``.
        task: a name in :data:`TASKS` (``"denoise"``).
        config: the denoising :class:`FitConfig` (default: the ``denoise`` preset's).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: slices fitted at once (memory only).
        window: ``(low, high)`` in HU mapped to [0, 1] (default: each volume's full range).
        org_root: UID prefix of the derived series (default: ``2.25.`` UUID-derived UIDs).
        retry_failed: redo volumes that failed in an earlier run.
        executor: a name in :data:`EXECUTORS` (``"serial"``, ``"ray"``) or an :class:`Executor` such as
            ``RayExecutor(address, gpus_per_task=0.5, chunk_slices=64)``.
        progress: ``None`` (default): tqdm bars for series and slices on a terminal, else one line per finished
            series on stderr (log files get no escape codes); ``True``: bars always; ``False``: nothing.
        transfer_syntax: of the derived series (:func:`dd_medical.io.write_series`): ``None`` or ``"auto"`` (each
            series keeps its source's lossless compression where an encoder is installed, else Explicit VR Little
            Endian), ``"explicit"``, ``"rle"``, ``"jpeg2000-lossless"``, ``"jpegls-lossless"`` or a UID; an unknown
            or unavailable one raises :class:`InputError` before anything is read. The manifest records the syntax
            each series was written in; a series done earlier in another syntax than this setting writes is redone.
        uncertainty: also write each series' uncertainty map (calibrated standard deviation of the denoised value,
            HU for CT) as a derived series ``series/S<hash>-uncertainty/`` referencing the denoised one, recorded in
            the manifest and shown in the montage; needs ``config.ensemble >= 2`` (:class:`InputError` before
            anything is read). A series done earlier without its map is redone.

    Returns a :class:`BatchSummary`; raises :class:`InputError` only for problems with the roots themselves or
    the options.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    resolve_transfer_syntax(transfer_syntax)  # an unknown or unavailable syntax: refused before any work
    config = resolve("denoise", config=config)
    if uncertainty and config.ensemble < 2:
        raise InputError(f"an uncertainty map needs an ensemble of 2 or more decoders per slice (the map is their "
                         f"spread); these settings fit {config.ensemble}: use --ensemble 2")
    runner = EXECUTORS[executor]() if isinstance(executor, str) else executor
    inp, out = check_roots(input_root, output_root)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        manifest = Manifest(out / MANIFEST_NAME)
        try:
            return _run(inp, out, manifest, task, config, device, batch_size, window, org_root, retry_failed,
                        runner, progress, transfer_syntax, uncertainty)
        finally:
            manifest.close()


def _run(inp: Path, out: Path, manifest: Manifest, task: str, config: FitConfig, device: str,
         batch_size: int | None, window: tuple[float, float] | None, org_root: str | None, retry_failed: bool,
         runner: Executor, progress: bool | None, transfer_syntax: str | None,
         uncertainty: bool = False) -> BatchSummary:
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

    planned: list[Planned] = []
    for series in scan.series:
        if series.samples_per_pixel != 1:  # e.g. a dose-report screenshot: an image, but nothing to denoise
            reason = f"colour image ({series.samples_per_pixel} samples per pixel) of series {series.key}: not denoised"
            summary.bad_files += [(relative_to(path, inp), reason) for path in series.files]
            continue
        key = series.key
        planned.append(Planned(
            series=series, key=key, folder=output_folder_name(key),
            source_digest=_source_digest(series.files, inp),
            excluded=[(relative_to(e.path, inp), e.reason) for e in series.excluded],
        ))

    manifest.set_skipped_files(summary.bad_files)
    for name, reason in summary.bad_files:
        log.warning("not processed %s: %s", name, reason)

    chosen = resolve_transfer_syntax(transfer_syntax)

    def settings(item: Planned) -> dict:
        return output_settings(task, config, item.series.modality, window, org_root)

    tasks: list[SeriesTask] = []
    for item in planned:
        row = manifest.get(item.key)
        if row is not None and row["status"] in ("done", "check"):
            problem = "" if row["source_digest"] == item.source_digest else "source files changed"
            problem = problem or verify_outputs(row, out, uncertainty=uncertainty)
            problem = problem or _transfer_syntax_problem(row, item.series.files, chosen)
            problem = problem or _settings_problem(row, settings(item))
            if not problem:
                summary.skipped.append(item.key)
                if row["status"] == "check":
                    summary.flagged.append((item.key, row["reason"]))
                continue
            log.warning("redoing %s: %s", item.key, problem)
        elif row is not None and row["status"] == "failed" and not retry_failed:
            summary.failed.append((item.key, f"failed in an earlier run (use --retry-failed): {row['reason']}"))
            continue
        manifest.schedule(item, task, config, str(chosen or AUTO), settings(item))
        tasks.append(SeriesTask(
            key=item.key, files=tuple(str(p) for p in item.series.files),
            output_dir=str(out / SERIES_DIR / item.folder), montage_path=str(out / MONTAGE_DIR / f"{item.folder}.png"),
            task=task, config=config, device=device, batch_size=batch_size, window=window, org_root=org_root,
            transfer_syntax=transfer_syntax, progress=progress,
            slices=0 if item.series.multiframe else len(item.series.files), token=token, uncertainty=uncertainty,
        ))

    _collect(runner, tasks, manifest, summary, out, token, progress)
    _remove_leftovers(out)  # temporary folders of tasks whose worker was killed (the task was retried)
    with contextlib.suppress(OSError):
        (out / RECEIPT_DIR).rmdir()

    summary.report = _write_report(out, manifest, planned, summary)
    return summary


def _collect(runner: Executor, tasks: list[SeriesTask], manifest: Manifest, summary: BatchSummary, out: Path,
             token: str, progress: bool | None) -> None:
    """Run ``tasks`` and record each result as it arrives: in the manifest, the summary, and the progress (a bar on a
    terminal, else one line per series)."""
    bar = tqdm(total=len(tasks), unit="series", desc="series", disable=None if progress is None else not progress)
    lines = bar.disable and progress is not False
    try:
        for number, result in enumerate(runner.map(process_series, tasks), start=1):
            manifest.record(result)
            if token:
                (out / RECEIPT_DIR / f"{output_folder_name(result.key)}.json").unlink(missing_ok=True)
            if result.status in ("done", "check"):
                summary.done.append(result.key)
                log.info("done %s (%d slices)", result.key, result.slices)
                if result.status == "check":
                    summary.flagged.append((result.key, result.reason))
                    log.warning("flagged %s: %s", result.key, result.reason)
            else:
                summary.failed.append((result.key, result.reason))
                log.warning("failed %s: %s", result.key, result.reason)
            bar.update(1)
            if lines:
                tqdm.write(f"series {number}/{len(tasks)} {result.status}: {result.key}{_figures(result)}",
                           file=sys.stderr)
    finally:
        bar.close()


def _figures(result: SeriesResult) -> str:
    if result.status == "failed":
        return ""
    seconds = f" in {result.seconds_task:.1f} s" if result.seconds_task is not None else ""
    return f" ({result.slices} slice(s){seconds})"


def report_entry(out: Path, row: dict, *, key: str, folder: str, modality: str,
                 excluded: list[tuple[str, str]], skipped_now: bool = False) -> ReportEntry:
    """The report's entry for one series from its manifest ``row`` (empty: not processed yet) under the batch
    output ``out``: its figures, and its montage when the series was written."""
    montage = out / MONTAGE_DIR / f"{folder}.png"
    written = row.get("status") in ("done", "check") and montage.is_file()
    uncertain = written and row.get("uncertainty_outputs") is not None
    return ReportEntry(
        key=key, folder=f"{SERIES_DIR}/{folder}", modality=modality, status=row.get("status", "pending"),
        reason=row.get("reason", "") or "", slices=row.get("slices") or 0, seconds_read=row.get("seconds_read"),
        seconds_task=row.get("seconds_task"), seconds_write=row.get("seconds_write"),
        noise_before=row.get("noise_before"), noise_after=row.get("noise_after"),
        montage=f"{MONTAGE_DIR}/{montage.name}" if written else "", excluded=excluded, skipped_now=skipped_now,
        uncertainty_folder=f"{SERIES_DIR}/{uncertainty_folder_name(folder)}" if uncertain else "",
        uncertainty_median=row.get("uncertainty_median") if uncertain else None,
        uncertainty_scale=row.get("uncertainty_scale") if uncertain else None,
    )


def _write_report(out: Path, manifest: Manifest, planned: list[Planned], summary: BatchSummary) -> Path:
    skipped = set(summary.skipped)
    entries = [report_entry(out, manifest.get(item.key) or {}, key=item.key, folder=item.folder,
                            modality=item.series.modality, excluded=item.excluded, skipped_now=item.key in skipped)
               for item in planned]
    return write_report(out / REPORT_NAME, entries, summary.bad_files)
