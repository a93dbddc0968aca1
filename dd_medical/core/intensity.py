"""Intensity windows: HU (or MR stored values) <-> [0, 1], and back exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    """A linear map of ``[low, high]`` (HU for CT) onto [0, 1]; values outside are clipped by ``to_unit``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.low) or not np.isfinite(self.high):
            raise ValueError(f"window bounds must be finite, got [{self.low}, {self.high}]")
        if not self.high > self.low:
            raise ValueError(f"window must have high > low, got [{self.low}, {self.high}]")

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_unit(self, values: np.ndarray, clip: bool = True) -> np.ndarray:
        """Map values (HU) to [0, 1] as float32."""
        unit = (np.asarray(values, dtype=np.float64) - self.low) / self.width
        if clip:
            unit = np.clip(unit, 0.0, 1.0)
        return unit.astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Map [0, 1] back to values (HU), float32; the exact inverse of ``to_unit`` inside the window."""
        return (np.asarray(unit, dtype=np.float64) * self.width + self.low).astype(np.float32)


#: Modalities that a file may leave unrecorded (NIfTI, NRRD): their values decide (:func:`resolve_modality`).
UNKNOWN_MODALITIES = ("", "OT")


def resolve_modality(modality: str | None, values: np.ndarray) -> str:
    """The modality whose window and units ``values`` get: ``modality`` (upper-cased) when it is known, else the
    rule for files that do not record it (``None``, ``""``, ``"OT"``): ``"CT"`` when any value is negative (HU: air
    is -1000, fat -100), else ``"MR"`` (stored magnitudes, never negative)."""
    name = (modality or "").strip().upper()
    if name not in UNKNOWN_MODALITIES:
        return name
    return "CT" if float(np.nanmin(values)) < 0 else "MR"


def default_window(values: np.ndarray, modality: str = "CT") -> Window:
    """The window used when none is given.

    CT (and anything not MR): the full range ``[min, max]`` of ``values``, so that nothing is clipped.
    MR: robust percentiles 0.5 and 99.5 (MR has no absolute scale and a few very bright voxels), widened to the
    full range where the range is less than twice the robust width, so ordinary images are not clipped.
    A constant image gets a window of width 1 around its value.
    """
    values = np.asarray(values)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite values to choose an intensity window from")
    lo, hi = float(finite.min()), float(finite.max())
    if modality.upper() == "MR":
        plo, phi = (float(v) for v in np.percentile(finite, MR_PERCENTILES))
        if phi > plo and (hi - lo) > 2 * (phi - plo):
            lo, hi = plo, phi
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    return Window(lo, hi)
