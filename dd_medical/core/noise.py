"""Noise level of a single noisy image (no clean reference needed), and the pixels that carry noise at all."""

from __future__ import annotations

import numpy as np
import torch

MAD_TO_SIGMA = 0.6744897501960817  # median(|N(0,1)|)
#: A value that fills more than this fraction of an image is not noise: clipping at a window bound, constant padding
#: outside the scan circle (-2048, -1024), a saturated detector.
SPIKE_FRACTION = 0.01


def _batched(images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
    x = torch.as_tensor(images, dtype=torch.float32)
    single = x.ndim < 4
    while x.ndim < 4:
        x = x.unsqueeze(0)
    return x, single


def signal_mask(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``True`` where a pixel can carry noise: ``False`` on every pixel whose exact value fills more than
    :data:`SPIKE_FRACTION` of its image (clipped or padded regions, which hold no noise) and on their 4-neighbours.
    Same shape as ``images``: ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``."""
    x, single = _batched(images)
    masks = []
    for image in x:
        values, counts = torch.unique(image, return_counts=True)
        spikes = values[counts > SPIKE_FRACTION * image.numel()]
        flat = torch.isin(image, spikes)
        grown = flat.clone()
        grown[..., 1:, :] |= flat[..., :-1, :]
        grown[..., :-1, :] |= flat[..., 1:, :]
        grown[..., :, 1:] |= flat[..., :, :-1]
        grown[..., :, :-1] |= flat[..., :, 1:]
        masks.append(~grown)
    mask = torch.stack(masks)
    return mask.reshape(torch.as_tensor(images).shape) if single else mask


def estimate_sigma(images: torch.Tensor | np.ndarray, mask: torch.Tensor | None = None) -> torch.Tensor:
    """White-noise standard deviation per image, in the images' own units.

    Donoho's estimator (Donoho & Johnstone 1994): the median absolute value of the finest diagonal (HH) band of an
    orthonormal Haar wavelet transform, divided by 0.6745, over the 2x2 blocks whose four pixels are in ``mask``
    (default :func:`signal_mask`: clipped and padded regions, which hold no noise and would pull the median to
    zero, are left out). Noise that is correlated between neighbouring pixels (FBP) has less power in the finest band
    than its variance, so it is under-estimated. Accepts ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``; returns
    one value per image ``(B,)`` (a 0-d tensor for a single image), pooled over channels.
    """
    x, single = _batched(images)
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    if h < 2 or w < 2:
        raise ValueError(f"need at least 2x2 pixels to estimate noise, got {tuple(x.shape[-2:])}")
    valid = signal_mask(x) if mask is None else _batched(mask)[0].bool()
    x, valid = x[..., :h, :w], valid[..., :h, :w]
    hh = ((x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2).abs()
    keep = valid[..., 0::2, 0::2] & valid[..., 0::2, 1::2] & valid[..., 1::2, 0::2] & valid[..., 1::2, 1::2]
    sigma = torch.stack([(c[k] if bool(k.any()) else c.flatten()).median() for c, k in zip(hh, keep, strict=True)])
    sigma = sigma / MAD_TO_SIGMA
    return sigma[0] if single else sigma
