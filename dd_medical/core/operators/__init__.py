"""Forward models ``A``: images ``(B, C, H, W)`` -> measurements. A fit only ever sees :class:`ForwardModel`."""

from __future__ import annotations

from .base import ForwardModel, mean_squared_residual
from .ct import FULL_WEIGHT_COUNTS, STARVED_COUNTS, SUBPIXELS, ParallelBeamRadon, attenuation_to_hu, hu_to_attenuation
from .identity import Identity
from .inpaint import PixelMask
from .masks import MASK_MAKERS, equispaced_mask, random_mask, variable_density_mask
from .mri import CartesianFourier, rss
from .projection import GaussianProjection

__all__ = [
    "FULL_WEIGHT_COUNTS",
    "STARVED_COUNTS",
    "MASK_MAKERS",
    "SUBPIXELS",
    "CartesianFourier",
    "ForwardModel",
    "GaussianProjection",
    "Identity",
    "ParallelBeamRadon",
    "PixelMask",
    "attenuation_to_hu",
    "equispaced_mask",
    "hu_to_attenuation",
    "mean_squared_residual",
    "random_mask",
    "rss",
    "variable_density_mask",
]
