"""Batch report: a PNG montage per series (middle slice before | after | difference) and one HTML page.

PNGs are written through SimpleITK (8-bit grey), atomically. The page names series by UID and output folder,
and bad input files by their path relative to the input root; it never shows patient attributes.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io.atomic import atomic_output_file

_GAP_PX = 4  # white separator between the panels, pixels


def _to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(image, dtype=np.float64) - low) / max(high - low, 1e-12)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def montage(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``(H, 3W + 2*gap)`` uint8 panel: ``before | after | difference`` of two ``(H, W)`` slices.

    Before and after share one display window (0.5th..99.5th percentile of ``before``); the difference
    ``before - after`` is shown around mid-grey (128 = no change), scaled to its 99.5th absolute percentile.
    """
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"montage needs two (H, W) slices of one shape, got {before.shape} and {after.shape}")
    low, high = np.percentile(before, [0.5, 99.5])
    if high <= low:
        low, high = float(before.min()), float(before.max()) + 1.0
    difference = before - after
    span = float(np.percentile(np.abs(difference), 99.5)) or 1.0
    gap = np.full((before.shape[0], _GAP_PX), 255, dtype=np.uint8)
    return np.concatenate(
        [_to_uint8(before, low, high), gap, _to_uint8(after, low, high), gap, _to_uint8(difference, -span, span)],
        axis=1,
    )


def write_montage(before: np.ndarray, after: np.ndarray, path: str | Path) -> Path:
    """Write :func:`montage` of two ``(H, W)`` slices as an 8-bit PNG at ``path`` (atomically, replacing)."""
    path = Path(path)
    with atomic_output_file(path, overwrite=True) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(montage(before, after)), str(tmp))
    return path


@dataclass
class ReportEntry:
    """One series in the report (all values non-identifying: UIDs, counts, seconds, noise in HU or units)."""

    key: str
    folder: str
    modality: str
    status: str
    reason: str = ""
    slices: int = 0
    seconds_read: float | None = None
    seconds_task: float | None = None
    seconds_write: float | None = None
    noise_before: float | None = None
    noise_after: float | None = None
    montage: str = ""  # path relative to the report's folder
    excluded: Sequence[tuple[str, str]] = ()  # (file relative to the input root, reason)
    skipped_now: bool = False  # done in an earlier run, outputs verified


def _number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_report(
    path: str | Path,
    entries: Sequence[ReportEntry],
    bad_files: Sequence[tuple[str, str]],
    *,
    title: str = "dd-medical batch report",
) -> Path:
    """Write the HTML report at ``path`` (atomically): a summary, one row per series with its montage, noise
    estimates (median per-slice wavelet estimate, HU for CT) and timings (seconds), and the input files that were
    not processed, with their reasons. Every value is HTML-escaped."""
    path = Path(path)
    esc = html.escape
    done = sum(e.status == "done" and not e.skipped_now for e in entries)
    skipped = sum(e.skipped_now for e in entries)
    failed = sum(e.status == "failed" for e in entries)
    flagged = sum(e.status == "check" for e in entries)
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top;text-align:left}"
        ".failed{color:#b00}img{max-width:900px}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(dt.datetime.now().isoformat(timespec='seconds'))}: {len(entries)} series; {done} done in this run, "
        f"{skipped} skipped (done earlier, outputs verified), {failed} failed, {flagged} flagged by the fidelity check "
        f"(written, but a slice's residual does not look like noise); {len(bad_files)} input files not processed.</p>",
        "<h2>Series</h2>",
        "<table><tr><th>Series (UID # split)</th><th>Output folder</th><th>Status</th><th>Slices</th>"
        "<th>Noise before / after</th><th>Seconds read / task / write</th><th>Montage: before | after | "
        "difference (middle slice)</th></tr>",
    ]
    for e in entries:
        status = "done (earlier run)" if e.skipped_now else e.status
        if e.reason:
            status += f": {e.reason}"
        notes = "".join(f"<br><small>left out: {esc(name)} ({esc(why)})</small>" for name, why in e.excluded)
        image = f'<img src="{esc(e.montage)}" alt="montage">' if e.montage else ""
        units = "HU" if e.modality == "CT" else ""
        noise = (
            f"{_number(e.noise_before)} / {_number(e.noise_after)} {units}" if e.noise_before is not None else ""
        )
        timing = " / ".join(_number(v, 2) for v in (e.seconds_read, e.seconds_task, e.seconds_write))
        css = ' class="failed"' if e.status in ("failed", "check") else ""
        lines.append(
            f"<tr><td>{esc(e.key)}{notes}</td><td>{esc(e.folder)}</td><td{css}>{esc(status)}</td>"
            f"<td>{e.slices or ''}</td><td>{esc(noise)}</td><td>{esc(timing)}</td><td>{image}</td></tr>"
        )
    lines.append("</table>")
    lines.append("<h2>Input files not processed</h2>")
    if bad_files:
        lines.append("<table><tr><th>File</th><th>Reason</th></tr>")
        lines += [f"<tr><td>{esc(name)}</td><td>{esc(why)}</td></tr>" for name, why in bad_files]
        lines.append("</table>")
    else:
        lines.append("<p>None.</p>")
    lines.append("</body></html>")
    with atomic_output_file(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def relative_to(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (POSIX separators) when inside it, else its name."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name
