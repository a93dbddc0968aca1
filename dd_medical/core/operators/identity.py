"""Denoising: the measurements are the noisy image itself."""

from __future__ import annotations

import torch

from ...errors import InputError
from .base import ForwardModel


class Identity(ForwardModel):
    """``A = I``: measurements are images ``(B, C, H, W)`` in [0, 1]."""

    kind = "identity"

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        if measurements.ndim != 4:
            raise InputError(f"Identity expects measurements of shape (B, C, H, W), got {tuple(measurements.shape)}")
        return tuple(measurements.shape[1:])  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y
