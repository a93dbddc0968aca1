"""Compressive sensing with a dense Gaussian matrix (small images)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InputError
from .base import ForwardModel


class GaussianProjection(ForwardModel):
    """``y = G x.flatten()`` with ``G`` an ``(m, C*H*W)`` matrix of N(0, 1/m) entries; measurements ``(B, m)``.

    ``baseline(y)`` is the minimum-norm least-squares image ``G^+ y``.

    Args:
        m: number of measurements.
        image_shape: ``(C, H, W)`` or ``(H, W)`` of the image.
        seed: seed of ``G``.
    """

    kind = "cs"
    baseline_name = "pseudo-inverse"
    measurement_ndim = 2

    def __init__(self, m: int, image_shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        shape = tuple(int(s) for s in image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"image_shape must be (C, H, W) or (H, W), got {image_shape}")
        if m < 1:
            raise InputError(f"need at least one measurement, got m={m}")
        self.shape = shape
        self.m = int(m)
        generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("matrix", torch.randn(self.m, int(np.prod(shape)), generator=generator) / np.sqrt(self.m))
        self.register_buffer("pinv", None)  # G^+, computed on first use

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        if measurements.ndim != 2 or measurements.shape[1] != self.m:
            raise InputError(f"measurements must be (B, m={self.m}), got shape {tuple(measurements.shape)}")
        return self.shape  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.matrix).view(y.shape[0], *self.shape)

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        if self.pinv is None:
            self.pinv = torch.linalg.pinv(self.matrix.double()).float()
        return (y @ self.pinv.T).view(y.shape[0], *self.shape)
