"""Block averaging, shared by the benchmarks that make coarser slices from finer ones (about 3 mm pixels from a
512 px CT slice, as MONAI pipelines resample them; a finer grid for a simulated scan)."""

from __future__ import annotations

import numpy as np


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block of the last two axes of ``image`` (``(..., H, W)``; rows and
    columns past a multiple of ``factor`` dropped), in numpy's dtype for the mean (float64 for integers)."""
    h, w = image.shape[-2] // factor * factor, image.shape[-1] // factor * factor
    blocks = image[..., :h, :w].reshape(*image.shape[:-2], h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(-3, -1))
