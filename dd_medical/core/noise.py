"""Noise-level estimation from a single noisy image (no clean reference needed)."""

from __future__ import annotations

import numpy as np
import torch

MAD_TO_SIGMA = 0.6744897501960817  # median(|N(0,1)|)


def estimate_sigma(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Robust white-noise standard deviation per image, in the images' own units.

    Donoho's estimator: the median absolute value of the finest diagonal (HH) band of an orthonormal Haar
    wavelet transform, divided by 0.6745. Structure hardly reaches that band, so the estimate is driven by the
    noise. Accepts ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``; returns one value per image ``(B,)``
    (a 0-d tensor for a single image), pooled over channels.
    """
    x = torch.as_tensor(images, dtype=torch.float32)
    single = x.ndim < 4
    while x.ndim < 4:
        x = x.unsqueeze(0)
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    if h < 2 or w < 2:
        raise ValueError(f"need at least 2x2 pixels to estimate noise, got {tuple(x.shape[-2:])}")
    x = x[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    sigma = hh.abs().flatten(1).median(dim=1).values / MAD_TO_SIGMA
    return sigma[0] if single else sigma
