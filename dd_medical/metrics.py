"""Image-quality figures through MONAI's metrics (PSNR, SSIM) on [0, 1] images."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric


def _as_batch(image: np.ndarray | torch.Tensor, dtype: type = np.float32) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(image, dtype=dtype))
    if t.ndim == 2:  # (H, W)
        t = t[None, None]
    elif t.ndim == 3:  # (D, H, W): slices as a batch
        t = t[:, None]
    if t.ndim != 4:
        raise ValueError(f"expected (H, W), (D, H, W) or (B, C, H, W), got shape {tuple(t.shape)}")
    return t


def psnr(image: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB per slice, ``(D,)`` for ``(D, H, W)`` input (a float for one ``(H, W)`` image); computed in float64;
    ``inf`` for identical slices."""
    values = PSNRMetric(max_val=data_range, reduction="none")(_as_batch(image, np.float64),
                                                              _as_batch(reference, np.float64))
    out = values.reshape(-1).numpy().astype(np.float64)
    return float(out[0]) if np.ndim(image) == 2 else out


def ssim(image: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, data_range: float = 1.0) -> np.ndarray:
    """SSIM per slice (Gaussian window 11 px, sigma 1.5), ``(D,)`` for ``(D, H, W)`` (a float for ``(H, W)``)."""
    metric = SSIMMetric(spatial_dims=2, data_range=data_range, reduction="none")
    values = metric(_as_batch(image), _as_batch(reference))
    out = values.reshape(-1).numpy().astype(np.float64)
    return float(out[0]) if np.ndim(image) == 2 else out
