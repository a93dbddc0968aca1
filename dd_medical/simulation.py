"""Retrospective simulation: measurements made from known images, to validate a reconstruction against them.

```python
from dd_medical.simulation import simulate
import dd_medical

sim = simulate(mr_slices, "mri", modality="MR", acceleration=4, center_fraction=0.08)   # (D, H, W) magnitudes
image = dd_medical.reconstruct(sim.measurements, sim.operator)                          # (D, H, W) RSS magnitude

ct = simulate(ct_slices_hu, "ct", views=60, downsample=2, photons=1e4, pixel_mm=0.8)      # a low-dose scan
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .core.intensity import resolve_modality
from .core.operators import (
    MASK_MAKERS,
    SUBPIXELS,
    CartesianFourier,
    ForwardModel,
    ParallelBeamRadon,
    PixelMask,
    attenuation_to_hu,
    hu_to_attenuation,
)
from .errors import InputError
from .pipeline import check_slices

#: Linear attenuation of water (1/mm) at a typical CT effective energy (about 70 keV), for photon statistics.
MU_WATER_PER_MM = 0.02
#: Standard deviation of the detector's electronic noise, in detected photons per ray.
ELECTRONIC_COUNTS = 10.0


@dataclass
class Simulation:
    """Measurements simulated from known images, for validation.

    Attributes:
        measurements: batched over slices (``(D, 1, H, W, 2)`` k-space, ``(D, 1, views, detectors)`` sinogram,
            ``(D, 1, H, W)`` masked images).
        operator: the forward model that produced them.
        reference: ``(D, H, W)`` float32, the ground truth in the reconstruction's scale.
        to_input_units: maps a reconstruction (reconstruction scale) back to the input's units (e.g. HU).
        counts: CT with ``photons``: the detected counts ``(D, views, detectors)`` float32 the sinogram was made
            from (the operator weighs the rays by them, :meth:`ParallelBeamRadon.with_counts`); otherwise ``None``.
    """

    measurements: torch.Tensor
    operator: ForwardModel
    reference: np.ndarray
    to_input_units: Callable[[np.ndarray], np.ndarray]
    counts: np.ndarray | None = None


def photon_counts(path: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Detected counts of rays through ``path`` (dimensionless line integrals ``mu * length``, any shape) from
    ``photons`` incident on each: Poisson counts plus Gaussian electronic noise (:data:`ELECTRONIC_COUNTS`), at
    least 1 (a detector reports a positive signal), float64. ``-log(counts / photons)`` is the measured path."""
    counts = rng.poisson(photons * np.exp(-path)) + rng.normal(0.0, ELECTRONIC_COUNTS, path.shape)
    return np.maximum(counts, 1.0)


def simulate(
    images: np.ndarray,
    kind: str,
    *,
    modality: str = "CT",
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    mask_type: str = "equispaced",
    mask: np.ndarray | None = None,
    views: int = 60,
    arc_deg: float = 180.0,
    missing: float = 0.5,
    seed: int = 0,
    real_object: bool = False,
    downsample: int = 1,
    photons: float | None = None,
    pixel_mm: float = 1.0,
) -> Simulation:
    """Simulate measurements of ``images`` ``(D, H, W)`` (or ``(H, W)``).

    Args:
        kind: ``"mri"`` (single-coil Cartesian k-space of the image as a real object), ``"ct"`` (parallel-beam
            sinogram with ``views`` angles evenly over ``arc_deg`` degrees: 180 for sparse view, less for limited
            angle) or ``"inpaint"`` (``missing`` fraction of pixels removed at random).
        modality: ``"CT"`` images (and unknown ones, ``"OT"``, with negative values:
            :func:`~dd_medical.core.intensity.resolve_modality`) are HU and are converted to attenuation
            (:func:`hu_to_attenuation`) before measuring; others must be non-negative (MR magnitude) and are
            measured as they are.
        acceleration: MRI undersampling factor (>= 1).
        center_fraction: MRI: fraction of the central k-space columns always sampled.
        mask_type: MRI mask maker: ``"equispaced"``, ``"random"`` or ``"variable-density"``.
        mask: an explicit mask (``(W,)`` or ``(H, W)``) instead of ``mask_type``.
        seed: seed of the mask (MRI offset/lines, inpainting pixels).
        real_object: MRI: reconstruct with ``CartesianFourier(real=True)``, i.e. use the knowledge that the
            simulated object (a magnitude image) is real and non-negative. Off by default: scanner data has phase.
        downsample: CT: the scan is measured on the images' own pixel grid, with ``downsample`` times as many
            detector bins, summed back in groups, and the returned operator reconstructs on a grid ``downsample``
            times coarser (``(H / s, W / s)``, with ``SUBPIXELS`` sub-pixels; ``reference`` is the ``s x s`` block
            average of ``images``; the fine grid is projected with 2x2 sub-pixels). With
            ``s >= 2`` the measurements hold detail and a discretisation the reconstruction's model does not
            share, so simulating and reconstructing do not use the same discrete operator (the "inverse crime"
            that flatters every method on ``s = 1``, the default). ``H`` and ``W`` must be multiples of ``s``.
        photons: CT: a noisy scan with this many photons incident on each ray (about 1e5 routine dose, 1e4 low
            dose; :func:`photon_counts`): the measured line integrals are ``-log(counts / photons)``, so noise is
            strongest through the densest paths and rays starved of photons are biased, as a scanner's are.
            ``Simulation.counts`` holds the counts, and the operator weighs each ray by them
            (:meth:`ParallelBeamRadon.with_counts`), as a reconstruction from the scanner's counts would. Default
            ``None``: noise-free. Needs CT images in HU (attenuation
            from :data:`MU_WATER_PER_MM`) and ``pixel_mm``.
        pixel_mm: CT with ``photons``: the images' pixel size in mm (square pixels), which sets each path's length.
    """
    slices = check_slices(images, "image")
    depth, height, width = slices.shape
    if int(downsample) != downsample or downsample < 1:
        raise InputError(f"downsample must be a whole number >= 1, got {downsample}")
    downsample = int(downsample)
    if downsample > 1 and kind != "ct":
        raise InputError(f"downsample applies to CT simulation only (got {kind!r})")
    if height % downsample or width % downsample:
        raise InputError(f"image size {height}x{width} is not a multiple of downsample {downsample}")
    is_ct = resolve_modality(modality, slices) == "CT"
    _check_photons(kind, is_ct, photons, pixel_mm)
    if is_ct:  # HU
        reference, back = hu_to_attenuation(slices), attenuation_to_hu
    else:
        if slices.min() < 0:
            raise InputError(f"{modality} images hold negative values; simulation expects magnitudes >= 0")
        reference, back = slices, (lambda a: np.asarray(a, dtype=np.float32))
    x = torch.from_numpy(reference)[:, None]
    if kind == "mri":
        if mask is None:
            if mask_type not in MASK_MAKERS:
                raise InputError(f"unknown mask type {mask_type!r}; choose one of {', '.join(MASK_MAKERS)}")
            mask = MASK_MAKERS[mask_type](width, acceleration, center_fraction, seed)
        op = CartesianFourier(mask, coils=1, real=real_object)
        op.image_shape(torch.zeros(1, 1, height, width, 2))  # mask vs image size
        y = op.forward(x if real_object else torch.cat([x, torch.zeros_like(x)], dim=1))
    elif kind == "ct":
        if views < 1:
            raise InputError(f"CT simulation needs at least one view, got {views}")
        if not 0 < arc_deg <= 360:
            raise InputError(f"arc must be in (0, 360] degrees, got {arc_deg}")
        angles = np.linspace(0.0, arc_deg, views, endpoint=False)
        s = downsample
        op = ParallelBeamRadon(angles, (height // s, width // s), subpixels=1 if s == 1 else SUBPIXELS)
        if s == 1:
            y = op.forward(x)
        else:  # measure the fine grid (2x2 sub-pixels) with s bins per coarse bin; s fine bins sum to one (/ s^2)
            fine = ParallelBeamRadon(angles, (height, width), detectors=s * op.detectors, precondition=False,
                                     subpixels=2)
            y = fine.forward(x).reshape(depth, 1, views, op.detectors, s).sum(-1) / s**2
            reference = reference.reshape(depth, height // s, s, width // s, s).mean(axis=(2, 4))
        if photons is not None:
            y, counts = photon_noise(y, photons, pixel_mm * s, seed)
            return Simulation(y, op.with_counts(counts, photons), reference, back, counts)
    elif kind == "inpaint":
        if not 0 <= missing < 1:
            raise InputError(f"missing fraction must be in [0, 1), got {missing}")
        keep = np.random.default_rng(seed).uniform(size=(height, width)) >= missing
        op = PixelMask(keep if mask is None else mask)
        y = op.forward(x)
    else:
        raise InputError(f"unknown simulation {kind!r}; choose mri, ct or inpaint")
    return Simulation(y, op, reference, back)


def _check_photons(kind: str, is_ct: bool, photons: float | None, pixel_mm: float) -> None:
    if photons is None:
        return
    if kind != "ct" or not is_ct:
        raise InputError(f"photons applies to CT images in HU simulated as 'ct' (got {kind!r} of non-CT images)"
                         if kind == "ct" else f"photons applies to CT simulation only (got {kind!r})")
    if not (math.isfinite(photons) and photons >= 1):
        raise InputError(f"photons must be a finite count >= 1 per ray, got {photons}")
    if not (math.isfinite(pixel_mm) and pixel_mm > 0):
        raise InputError(f"pixel_mm must be a positive size in mm, got {pixel_mm}")


def photon_noise(y: torch.Tensor, photons: float, pixel_mm: float, seed: int | np.random.Generator = 0
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """A noisy scan of noise-free sinograms ``y`` ``(D, 1, views, detectors)`` (line integrals of attenuation
    relative to water, in pixels of ``pixel_mm`` mm): the measured line integrals, same shape and units, and the
    detected counts ``(D, views, detectors)`` float32 (:func:`photon_counts`, ``photons`` per ray; ``seed`` or a
    generator)."""
    scale = MU_WATER_PER_MM * pixel_mm
    counts = photon_counts(np.maximum(y.double().numpy(), 0.0) * scale, photons, np.random.default_rng(seed))
    noisy = -np.log(counts / photons) / scale
    return torch.from_numpy(noisy.astype(np.float32)), counts[:, 0].astype(np.float32)
