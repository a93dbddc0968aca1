"""k-space sampling masks; columns are phase-encoding lines (MONAI's convention, ``monai.apps.reconstruction``)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InputError


def _check_acceleration(acceleration: float, center_fraction: float) -> None:
    if not acceleration >= 1:
        raise InputError(f"acceleration must be >= 1 (1 = fully sampled), got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise InputError(f"center_fraction must be in [0, 1], got {center_fraction}")


def _center_lines(width: int, center_fraction: float) -> tuple[np.ndarray, int]:
    """MONAI's fully sampled centre: ``round(W * center_fraction)`` columns starting at ``(W - n + 1) // 2``."""
    num_low = int(round(width * center_fraction))
    mask = np.zeros(width, dtype=bool)
    pad = (width - num_low + 1) // 2
    mask[pad:pad + num_low] = True
    return mask, num_low


def random_mask(width: int, acceleration: float = 4.0, center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """Random line mask drawn by MONAI's ``RandomKspaceMask``: ``(W,)`` float32 of 0/1.

    The ``round(W * center_fraction)`` central columns are always sampled; every other column with probability
    ``(W / acceleration - n_centre) / (W - n_centre)``, so about ``W / acceleration`` lines in all. MONAI draws
    from a ``RandomState`` on ``seed``'s PCG64 stream, i.e. the draws of ``np.random.default_rng(seed)``.
    """
    _check_acceleration(acceleration, center_fraction)
    mask, num_low = _center_lines(width, center_fraction)
    if num_low >= width:  # all centre: MONAI's probability would divide by zero
        return mask.astype(np.float32)
    from monai.apps.reconstruction.transforms.array import RandomKspaceMask  # importing monai takes seconds

    transform = RandomKspaceMask(center_fractions=[center_fraction], accelerations=[acceleration])
    transform.set_random_state(state=np.random.RandomState(np.random.PCG64(seed)))
    transform(torch.zeros(1, 1, width, 2))  # draws transform.mask for one (1, W) coil image of k-space
    return transform.mask.reshape(-1).numpy()


def equispaced_mask(width: int, acceleration: float = 4.0, center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """Equispaced line mask as MONAI's ``EquispacedKspaceMask``: ``(W,)`` float32 of 0/1.

    A fully sampled centre plus equispaced columns with a random offset (from ``seed``), the spacing adjusted so
    that about ``W / acceleration`` lines are sampled in all.
    """
    _check_acceleration(acceleration, center_fraction)
    mask, num_low = _center_lines(width, center_fraction)
    if acceleration > 1 and num_low * acceleration < width:
        adjusted = (acceleration * (num_low - width)) / (num_low * acceleration - width)
        offset = int(np.random.default_rng(seed).integers(0, max(1, round(adjusted))))
        mask[np.around(np.arange(offset, width - 1, adjusted)).astype(int)] = True
    elif acceleration == 1:
        mask[:] = True
    return mask.astype(np.float32)


def variable_density_mask(
    shape: int | tuple[int, int],
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    seed: int = 0,
    decay: float = 2.0,
) -> np.ndarray:
    """Variable-density mask: samples drawn without replacement with density ``(1 + r)^-decay``.

    ``shape`` an int ``W`` gives a ``(W,)`` line mask (``r`` = distance of a column from the centre, in units of
    ``W/2``); an ``(H, W)`` tuple gives a 2D point mask (``r`` radial). The centre (``center_fraction`` of the
    columns, or a square of that fraction of each side) is always sampled; ``1/acceleration`` of all samples in
    all. Float32 of 0/1.
    """
    _check_acceleration(acceleration, center_fraction)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in dims], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    centre = np.ones(dims, dtype=bool)
    for axis, n in enumerate(dims):
        line, _ = _center_lines(n, center_fraction)
        centre &= np.expand_dims(line, [a for a in range(len(dims)) if a != axis])
    total = int(round(radius.size / acceleration))
    need = max(0, total - int(centre.sum()))
    density = np.where(centre, 0.0, (1.0 + radius) ** -decay).ravel()
    mask = centre.ravel().copy()
    if need and density.sum() > 0:
        chosen = np.random.default_rng(seed).choice(density.size, size=min(need, int((density > 0).sum())),
                                                    replace=False, p=density / density.sum())
        mask[chosen] = True
    return mask.reshape(dims).astype(np.float32)


#: Mask makers by name: ``maker(width, acceleration, center_fraction, seed)``.
MASK_MAKERS = {"equispaced": equispaced_mask, "random": random_mask, "variable-density": variable_density_mask}
