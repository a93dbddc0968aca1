"""The in-memory volume every front-end and the core exchange."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass
class Volume:
    """A stack of 2D slices with its geometry.

    Attributes:
        array: ``(D, H, W)`` float32; Hounsfield units for CT, stored values (after any rescale) otherwise.
        spacing: ``(x, y, z)`` in millimetres (SimpleITK order: column, row, slice).
        origin: ``(x, y, z)`` position of the first voxel's centre in patient (LPS) coordinates, millimetres.
        direction: 3x3 direction cosines, row-major, as SimpleITK's ``GetDirection()`` (columns are the x, y, z
            axes of the array in patient space).
        modality: DICOM modality (``"CT"``, ``"MR"``, ...) or ``"OT"`` when unknown.
        source_files: one path per slice, in slice order, when read from a DICOM series (else empty).
        metadata: non-identifying descriptive values (UIDs, series description is *not* kept).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    modality: str = "OT"
    source_files: list[Path] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"a Volume holds (D, H, W) slices, got an array of shape {arr.shape}")
        self.array = np.ascontiguousarray(arr, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """A copy with new voxel values (same shape) and the same geometry and sources."""
        if np.shape(array) != self.array.shape:
            raise ValueError(f"new array shape {np.shape(array)} differs from the volume's {self.array.shape}")
        return replace(self, array=array, source_files=list(self.source_files), metadata=dict(self.metadata))
