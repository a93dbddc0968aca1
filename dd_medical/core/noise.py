"""Noise level of a single noisy image (no clean reference needed), and the pixels that carry noise at all.

:func:`estimate_sigma` measures the standard deviation of the noise, in the images' own units (HU for CT, stored
values for MR, or the fit's [0, 1] scale), from one image alone. Two methods:

- ``"finest"``: Donoho's estimator (Donoho & Johnstone 1994), the median absolute value of the finest diagonal (HH)
  band of an orthonormal Haar transform divided by 0.6745. Right for white noise; noise that is correlated between
  neighbouring pixels (filtered back-projection CT, interpolated or smooth-kernel reconstructions) has less power in
  that band than its variance, and is under-estimated.
- ``"total"`` (the default): the noise's total variance, at every scale: the finest diagonal band's level, measured
  over the quieter part of the image, times the ratio of the noise's total variance to that band's, measured in the
  flattest small tiles of the image (see :func:`estimate_sigma`).

Both leave out the pixels that hold no noise (:func:`signal_mask`). How far each is off, for white, clipped, padded
and FBP noise on real CT slices, is measured by ``benchmarks/bench_noise.py`` (docs: Results).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

MAD_TO_SIGMA = 0.6744897501960817  # median(|N(0,1)|)
#: A value that fills more than this fraction of an image is not noise: clipping at a window bound, constant padding
#: outside the scan circle (-2048, -1024), a saturated detector.
SPIKE_FRACTION = 0.01
#: Side in pixels of the tiles in which ``method="total"`` measures the noise at every scale.
TILE = 4
#: Fraction of the tiles (the flattest neighbourhoods) in which the noise's total-to-finest-band ratio is measured.
FLAT_FRACTION = 0.1
#: Fraction of the tiles (the quieter neighbourhoods) over which the finest band's level is measured.
LEVEL_FRACTION = 0.75
#: Fewest flat tiles that ``method="total"`` measures the ratio in; a smaller image (below about 56 x 56 pixels)
#: gets the ``"finest"`` estimate.
MIN_FLAT_TILES = 16
#: Largest total-to-finest-band variance ratio believed (a standard deviation at most 4 times the finest band's):
#: beyond it, what the flattest tiles hold is taken for structure, not noise.
MAX_RATIO = 16.0

Method = Literal["total", "finest"]
METHODS: tuple[str, ...] = ("total", "finest")


def _batched(images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
    x = torch.as_tensor(images, dtype=torch.float32)
    single = x.ndim < 4
    while x.ndim < 4:
        x = x.unsqueeze(0)
    return x, single


def constant_pixels(image: torch.Tensor) -> torch.Tensor:
    """``True`` on every pixel of ``image`` whose exact value fills more than :data:`SPIKE_FRACTION` of it (clipping
    at a window bound, constant padding): pixels that hold no noise. Same shape as ``image``."""
    values, counts = torch.unique(image, return_counts=True)
    return torch.isin(image, values[counts > SPIKE_FRACTION * image.numel()])


def signal_mask(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``True`` where a pixel can carry noise: ``False`` on every pixel whose exact value fills more than
    :data:`SPIKE_FRACTION` of its image (clipped or padded regions, which hold no noise) and on their 4-neighbours.
    Same shape as ``images``: ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``."""
    x, single = _batched(images)
    masks = []
    for image in x:
        flat = constant_pixels(image)
        grown = flat.clone()
        grown[..., 1:, :] |= flat[..., :-1, :]
        grown[..., :-1, :] |= flat[..., 1:, :]
        grown[..., :, 1:] |= flat[..., :, :-1]
        grown[..., :, :-1] |= flat[..., :, 1:]
        masks.append(~grown)
    mask = torch.stack(masks)
    return mask.reshape(torch.as_tensor(images).shape) if single else mask


def _diagonal(x: torch.Tensor) -> torch.Tensor:
    """The finest diagonal (HH) band of an orthonormal Haar transform of ``x`` ``(..., 2m, 2n)``: ``(..., m, n)``."""
    return (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2


def _finest(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Donoho's estimate of one image ``(C, H, W)`` over the 2x2 blocks whose four pixels are ``valid``."""
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x, valid = x[..., :h, :w], valid[..., :h, :w]
    hh = _diagonal(x).abs()
    keep = valid[..., 0::2, 0::2] & valid[..., 0::2, 1::2] & valid[..., 1::2, 0::2] & valid[..., 1::2, 1::2]
    return (hh[keep] if bool(keep.any()) else hh.flatten()).median() / MAD_TO_SIGMA


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, H // TILE, W // TILE, TILE, TILE)`` (the remainder rows and columns dropped)."""
    c, h, w = x.shape
    rows, cols = h // TILE, w // TILE
    return x[:, :rows * TILE, :cols * TILE].reshape(c, rows, TILE, cols, TILE).transpose(2, 3)


def _neighbour_max(values: torch.Tensor) -> torch.Tensor:
    """The largest value among each tile's 8 neighbours (``inf`` at the border), the tile itself left out."""
    c, rows, cols = values.shape
    padded = torch.full((c, rows + 2, cols + 2), float("inf"), dtype=values.dtype)
    padded[:, 1:-1, 1:-1] = values
    shifted = [padded[:, 1 + dy:rows + 1 + dy, 1 + dx:cols + 1 + dx]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return torch.stack(shifted).amax(dim=0)


def _total(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The total noise standard deviation of one image ``(C, H, W)``; see :func:`estimate_sigma`."""
    tiles, inside = _tiles(x.double()).contiguous(), _tiles(valid).flatten(-2).all(-1)  # (C, r, c, T, T), (C, r, c)
    # An orthonormal basis of the planes over a tile: constant, x ramp, y ramp; the rest of the tile's energy is
    # what no plane explains. The 3 removed dimensions get the noise energy of the tile's coarsest diagonal
    # coefficient (a plane has none), so a tile of pure noise keeps its whole variance, and a smooth ramp none.
    ramp = torch.arange(TILE, dtype=tiles.dtype) - (TILE - 1) / 2
    ramp = ramp / ramp.norm() / TILE**0.5
    centred = tiles - tiles.mean(dim=(-2, -1), keepdim=True)
    along_x, along_y = ramp.expand(TILE, TILE), ramp[:, None].expand(TILE, TILE)
    residual = centred.pow(2).sum((-2, -1)) - (centred * along_x).sum((-2, -1)).pow(2) \
        - (centred * along_y).sum((-2, -1)).pow(2)
    half = TILE // 2
    coarse = _diagonal(tiles.reshape(*tiles.shape[:-2], 2, half, 2, half).sum((-3, -1)) / half)[..., 0, 0]
    energy = (residual.clamp_min(0) + 3 * coarse.pow(2)) / TILE**2  # noise variance per pixel, every scale
    finest = _diagonal(tiles)  # (C, r, c, T/2, T/2)
    finest_energy = finest.pow(2).mean((-2, -1))
    # Flatness of a tile is judged by its neighbours alone: the tile's own noise then plays no part in choosing it,
    # and what is measured in it is not biased low (Ponomarenko et al. 2007 choose blocks by some coefficients and
    # measure the noise in others, analysed by Colom & Buades 2013; here the others are the neighbours' pixels).
    score = _neighbour_max(torch.where(inside, energy, torch.full_like(energy, float("inf"))))
    usable = inside & torch.isfinite(score)
    n = int(usable.sum())
    if n * FLAT_FRACTION < MIN_FLAT_TILES:
        return _finest(x, valid)
    scores = score[usable]
    flat = usable & (score <= torch.quantile(scores, FLAT_FRACTION))
    quiet = usable & (score <= torch.quantile(scores, LEVEL_FRACTION))
    level = finest[quiet].abs().median() / MAD_TO_SIGMA
    denominator = finest_energy[flat].sum()
    ratio = float(energy[flat].sum() / denominator) if float(denominator) > 0 else 1.0
    return level * min(ratio, MAX_RATIO) ** 0.5


def estimate_sigma(images: torch.Tensor | np.ndarray, mask: torch.Tensor | None = None, *,
                   method: Method = "total") -> torch.Tensor:
    """Standard deviation of the noise per image, in the images' own units (HU for CT, stored values for MR, the
    fit's [0, 1] scale for images mapped to it).

    Only the pixels in ``mask`` count (default :func:`signal_mask`: clipped and padded regions, which hold no noise
    and would pull the estimate to zero, are left out).

    ``method="total"`` (default) estimates the noise's total variance, not only its finest band's, so that noise
    correlated between neighbouring pixels (filtered back-projection CT, smooth reconstruction kernels, interpolated
    images) is measured whole, while white noise is measured as before. By Parseval, the variance of a pixel is the
    sum of the variances of an orthonormal transform's coefficients; per scale, that is the level-dependent
    noise of Johnstone & Silverman (1997). The image is cut into 4x4 tiles whose pixels are all in ``mask``; in
    each, the energy that no plane explains plus the noise energy of the planes' 3 dimensions (taken from the tile's
    coarsest diagonal coefficient, which a plane does not reach) estimates the noise variance at every scale, and
    the mean square of its finest diagonal (HH) coefficients the variance of the band Donoho's estimator reads. A
    tile counts as flat when all 8 of its neighbours hold little energy: the :data:`FLAT_FRACTION` flattest give the
    ratio of total to finest-band variance (Ponomarenko et al. 2007; Colom & Buades 2013: flat blocks chosen by
    other coefficients than those measured); the median absolute HH coefficient over the :data:`LEVEL_FRACTION`
    quieter tiles gives the finest band's level (Donoho & Johnstone 1994, without the busiest quarter of the image,
    whose edges it would read as noise). The estimate is that level times the square root of the ratio (at most
    :data:`MAX_RATIO`). The ratio is a property of the noise, not of its level, so regions of weaker noise (the
    air around a body) being flatter biases it little. Images with fewer than :data:`MIN_FLAT_TILES` flat tiles
    (smaller than about 56 x 56 pixels) get the ``"finest"`` estimate.

    ``method="finest"``: Donoho's estimator alone, the median absolute value of the finest diagonal band of an
    orthonormal Haar transform divided by 0.6745, over the 2x2 blocks whose four pixels are in ``mask``. Right
    for white noise; correlated noise has less power in that band than its variance and is under-estimated.

    Accepts ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``; returns one value per image ``(B,)`` (a 0-d tensor for a
    single image), pooled over channels, as float32.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x, single = _batched(images)
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"need at least 2x2 pixels to estimate noise, got {tuple(x.shape[-2:])}")
    valid = signal_mask(x) if mask is None else _batched(mask)[0].bool()
    one = _finest if method == "finest" else _total
    sigma = torch.stack([one(image, keep) for image, keep in zip(x, valid, strict=True)]).float()
    return sigma[0] if single else sigma
