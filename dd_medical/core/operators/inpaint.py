"""Inpainting: only some pixels are observed."""

from __future__ import annotations

import torch

from ...errors import InputError
from .base import ForwardModel, as_float_tensor


class PixelMask(ForwardModel):
    """``y = mask * x`` for images ``(B, C, H, W)``; missing pixels are 0 in ``y``.

    Args:
        mask: ``(H, W)`` bool or 0/1 (1 = pixel observed), numpy or torch.
    """

    kind = "inpaint"
    baseline_name = "masked input (missing pixels 0)"

    def __init__(self, mask) -> None:
        super().__init__()
        mask_t = as_float_tensor(mask, "pixel mask")
        if mask_t.ndim != 2:
            raise InputError(f"pixel mask must be (H, W), got shape {tuple(mask_t.shape)}")
        if not bool((mask_t != 0).any()):
            raise InputError("pixel mask observes no pixel")
        self.register_buffer("mask", mask_t)

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        shape = tuple(measurements.shape)
        if len(shape) != 4 or shape[2:] != tuple(self.mask.shape):
            raise InputError(f"masked image must be (B, C, {self.mask.shape[0]}, {self.mask.shape[1]}), "
                             f"got shape {shape}")
        return tuple(shape[1:])  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask
