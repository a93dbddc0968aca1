"""Batch report: a PNG montage per series (middle slice before | after | difference, and its uncertainty map when
one was written) and one HTML page.

PNGs are written through SimpleITK (8-bit grey), atomically. The page names series by UID and output folder,
and bad input files by their path relative to the input root; it never shows patient attributes.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io.atomic import atomic_output_file

_GAP_PX = 4  # white separator between the panels, pixels
_LABELLED_MIN_PX = 128  # a labelled montage (with the uncertainty tile) enlarges its tiles to at least this height
_BAND_PX = 14  # height of the label band above the tiles of a labelled montage, pixels
_RAMP_PX = 8  # width of the grey ramp beside the uncertainty tile, pixels


def _to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(image, dtype=np.float64) - low) / max(high - low, 1e-12)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def display_top(sd: np.ndarray) -> float:
    """The white end of an uncertainty map's tile (black is 0): its 99.5th percentile rounded up to two
    significant digits, in the map's units; 1 for a map of zeros."""
    top = float(np.percentile(sd, 99.5)) if np.size(sd) else 0.0
    if not math.isfinite(top) or top <= 0:
        return 1.0
    digits = 1 - math.floor(math.log10(top))
    return round(math.ceil(round(top * 10.0**digits, 9)) / 10.0**digits, max(digits, 0))


def montage(before: np.ndarray, after: np.ndarray, uncertainty: np.ndarray | None = None, *,
            scale: float | None = None, units: str = "HU") -> np.ndarray:
    """``(H, 3W + 2*gap)`` uint8 panel: ``before | after | difference`` of two ``(H, W)`` slices.

    Before and after share one display window (0.5th..99.5th percentile of ``before``); the difference
    ``before - after`` is shown around mid-grey (128 = no change), scaled to its 99.5th absolute percentile.

    With ``uncertainty`` (the slice's map, ``(H, W)``, >= 0 in ``units``) a fourth tile shows it from black (0) to
    white (``scale``, default :func:`display_top`), with a grey ramp marked ``0`` and ``scale`` beside it, and every
    tile is labelled in a band above the tiles (enlarged to at least 128 pixels high by a whole factor).
    """
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"montage needs two (H, W) slices of one shape, got {before.shape} and {after.shape}")
    low, high = np.percentile(before, [0.5, 99.5])
    if high <= low:
        low, high = float(before.min()), float(before.max()) + 1.0
    difference = before - after
    span = float(np.percentile(np.abs(difference), 99.5)) or 1.0
    tiles = [_to_uint8(before, low, high), _to_uint8(after, low, high), _to_uint8(difference, -span, span)]
    if uncertainty is None:
        gap = np.full((before.shape[0], _GAP_PX), 255, dtype=np.uint8)
        return np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if uncertainty.shape != before.shape:
        raise ValueError(f"the uncertainty tile is {uncertainty.shape}, the slices {before.shape}")
    top = scale or display_top(uncertainty)
    tiles.append(_to_uint8(uncertainty, 0.0, top))
    label = "uncertainty (SD, HU)" if units == "HU" else "uncertainty (SD)"
    return _labelled(tiles, ["before", "after", "difference", label], top)


def _labelled(tiles: list[np.ndarray], labels: list[str], top: float) -> np.ndarray:
    """The tiles side by side under a band of labels, the last followed by a black-to-white ramp marked 0 and
    ``top``."""
    from PIL import Image, ImageDraw, ImageFont

    factor = max(1, -(-_LABELLED_MIN_PX // tiles[0].shape[0]))
    height, width = tiles[0].shape[0] * factor, tiles[0].shape[1] * factor
    font = ImageFont.load_default()
    marks = [f"{top:g}", "0"]
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    column = int(max(draw.textlength(m, font=font) for m in marks)) + 4
    ramp_left = len(tiles) * (width + _GAP_PX)
    panel = Image.new("L", (ramp_left + _RAMP_PX + column, height + _BAND_PX), 255)
    draw = ImageDraw.Draw(panel)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        left = i * (width + _GAP_PX)
        panel.paste(Image.fromarray(tile).resize((width, height), Image.NEAREST), (left, _BAND_PX))
        draw.text((left + 2, 1), label, fill=0, font=font)
    ramp = np.linspace(255, 0, height).round().astype(np.uint8)[:, None].repeat(_RAMP_PX, axis=1)
    panel.paste(Image.fromarray(ramp), (ramp_left, _BAND_PX))
    draw.text((ramp_left + _RAMP_PX + 2, _BAND_PX), marks[0], fill=0, font=font)
    draw.text((ramp_left + _RAMP_PX + 2, _BAND_PX + height - 11), marks[1], fill=0, font=font)
    return np.asarray(panel, dtype=np.uint8)


def write_montage(before: np.ndarray, after: np.ndarray, path: str | Path, *, uncertainty: np.ndarray | None = None,
                  scale: float | None = None, units: str = "HU") -> Path:
    """Write :func:`montage` of two ``(H, W)`` slices (and of the ``uncertainty`` map's slice, with its ``scale``
    and ``units``) as an 8-bit PNG at ``path`` (atomically, replacing)."""
    path = Path(path)
    with atomic_output_file(path, overwrite=True) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(montage(before, after, uncertainty, scale=scale, units=units)),
                        str(tmp))
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
    uncertainty_folder: str = ""  # the uncertainty series' folder ("": none written)
    uncertainty_median: float | None = None  # median of the map over the volume (HU for CT)
    uncertainty_scale: float | None = None  # the white end of the montage's map tile (black: 0)


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
        "<th>Noise before / after</th><th>Seconds read / task / write</th><th>Montage (middle slice): before | "
        "after | difference, and the uncertainty map where one was written</th></tr>",
    ]
    for e in entries:
        status = "done (earlier run)" if e.skipped_now else e.status
        if e.reason:
            status += f": {e.reason}"
        notes = "".join(f"<br><small>left out: {esc(name)} ({esc(why)})</small>" for name, why in e.excluded)
        image = f'<img src="{esc(e.montage)}" alt="montage">' if e.montage else ""
        units = "HU" if e.modality == "CT" else ""
        folder = esc(e.folder)
        if e.uncertainty_folder:
            folder += f"<br>{esc(e.uncertainty_folder)} (uncertainty)"
            if image and e.uncertainty_scale is not None:
                unit = esc(units or "stored values")
                image += (f"<br><small>uncertainty map (calibrated standard deviation of the denoised value): "
                          f"black 0, white {e.uncertainty_scale:g} {unit}; median {_number(e.uncertainty_median)} "
                          f"{unit} over the volume</small>")
        noise = (
            f"{_number(e.noise_before)} / {_number(e.noise_after)} {units}" if e.noise_before is not None else ""
        )
        timing = " / ".join(_number(v, 2) for v in (e.seconds_read, e.seconds_task, e.seconds_write))
        css = ' class="failed"' if e.status in ("failed", "check") else ""
        lines.append(
            f"<tr><td>{esc(e.key)}{notes}</td><td>{folder}</td><td{css}>{esc(status)}</td>"
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
