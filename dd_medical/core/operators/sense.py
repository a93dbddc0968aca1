"""Multi-coil Cartesian MRI with coil sensitivity maps (SENSE; Pruessmann et al. 1999): one complex image per slice.

The decoder fits the object ``x``; coil ``k`` sees ``S_k x``. Sensitivities come with the data (from a scanner or a
tool such as BART) or are estimated from the fully sampled centre of k-space by :func:`espirit_sensitivities`
(ESPIRiT, Uecker et al. 2014, with sigpy: ``pip install 'dd-medical[mri]'``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ...errors import InputError
from .base import ForwardModel
from .mri import CartesianFourier, check_mask_fits, fft2c, ifft2c, kspace_mask, kspace_noise_floor, rss

log = logging.getLogger(__name__)

#: How multi-coil k-space is modelled (:func:`kspace_model`).
COIL_MAPS = ("espirit", "none")

#: ESPIRiT: eigenvalue crop (BART ecalib's default), singular-value threshold and kernel width (sigpy's defaults).
ESPIRIT_CROP, ESPIRIT_THRESHOLD, ESPIRIT_KERNEL = 0.8, 0.02, 6
#: Fewest fully sampled centre lines that coil sensitivities are estimated from.
MIN_CALIBRATION_LINES = 4
#: ESPIRiT's calibration matrix has at least this many rows (kernel positions) per column (coils x kernel^2).
ESPIRIT_ROWS_PER_COLUMN = 2


def centre_lines(mask: np.ndarray) -> tuple[int, int]:
    """``(first, stop)`` columns of the contiguous fully sampled centre of a line mask ``(W,)`` (or ``(H, W)``, whose
    columns are taken as sampled where every row is): the run of sampled columns that holds the centre column
    ``W // 2``. :class:`InputError` if the centre column is not sampled."""
    m = np.asarray(mask)
    lines = (m != 0).all(axis=0) if m.ndim == 2 else m != 0
    centre = lines.size // 2
    if not lines[centre]:
        raise InputError("the k-space mask does not sample the centre line: coil sensitivities need a fully "
                         "sampled centre (autocalibration lines)")
    first, stop = centre, centre + 1
    while first > 0 and lines[first - 1]:
        first -= 1
    while stop < lines.size and lines[stop]:
        stop += 1
    return first, stop


def calibration_lines(mask: np.ndarray) -> tuple[int, int]:
    """:func:`centre_lines`, checked to be at least :data:`MIN_CALIBRATION_LINES` wide (:class:`InputError` if not)."""
    first, stop = centre_lines(mask)
    if stop - first < MIN_CALIBRATION_LINES:
        raise InputError(f"the fully sampled centre of k-space has {stop - first} lines; coil sensitivities need "
                         f"at least {MIN_CALIBRATION_LINES}")
    return first, stop


def _calibration_region(height: int, lines: int, coils: int, kernel_width: int) -> tuple[int, int]:
    """``(readout rows, kernel width)`` of ESPIRiT's calibration: the widest kernel (at most ``kernel_width``, at
    least 2) for which some number of readout rows (at least 24, at most ``height``) gives the calibration matrix
    :data:`ESPIRIT_ROWS_PER_COLUMN` times as many rows (kernel positions) as columns."""
    for kernel in range(max(2, min(kernel_width, lines - 2)), 1, -1):
        columns = coils * kernel**2
        rows = kernel - 1 + math.ceil(ESPIRIT_ROWS_PER_COLUMN * columns / (lines - kernel + 1))
        if rows <= height:
            return min(height, max(24, rows)), kernel
    return height, 2


def espirit_slice(kspace: np.ndarray, first: int, stop: int, crop: float = ESPIRIT_CROP,
                  threshold: float = ESPIRIT_THRESHOLD, kernel_width: int = ESPIRIT_KERNEL,
                  iterations: int = 100) -> np.ndarray:
    """ESPIRiT coil sensitivities ``(coils, H, W)`` complex64 of one slice's k-space ``(coils, H, W)`` whose columns
    ``first:stop`` are fully sampled (Uecker et al. 2014).

    ``sigpy.mri.app.EspiritCalib``'s algorithm with a rectangular calibration region, as BART's ``ecalib`` allows:
    those columns by as many central readout rows as make the calibration matrix well determined
    (:func:`_calibration_region`; sigpy's square region of ``stop - first`` leaves too few kernel positions at
    fastMRI's 4% centre, and the maps come out wrong). Maps are 0 where the top eigenvalue is below ``crop``.
    """
    try:
        import sigpy as sp
    except ImportError as err:
        raise InputError("estimating coil sensitivities (ESPIRiT) needs sigpy: pip install 'dd-medical[mri]'") from err
    coils, height, _ = kspace.shape
    rows, kernel = _calibration_region(height, stop - first, coils, kernel_width)
    top = height // 2 - rows // 2  # centred as sigpy's resize centres
    calib = np.ascontiguousarray(kspace[:, top:top + rows, first:stop])
    mat = sp.array_to_blocks(calib, [kernel, kernel], [1, 1])
    mat = mat.reshape([coils, -1, kernel**2]).transpose([1, 0, 2]).reshape([-1, coils * kernel**2])
    _, singular, vh = np.linalg.svd(mat, full_matrices=False)
    vh = vh[singular > threshold * singular.max()]
    kernels = vh.reshape([len(vh), coils, kernel, kernel])
    shape = kspace.shape[1:]
    gram = np.zeros(shape[::-1] + (coils, coils), dtype=kspace.dtype)
    for k in kernels:
        image_kernel = sp.ifft(sp.resize(k, kspace.shape), axes=(-2, -1))
        column = np.expand_dims(image_kernel.T, axis=-1)
        gram += column @ np.conj(column.swapaxes(-1, -2))
    gram *= np.prod(shape) / kernel**2
    maps = np.ones(kspace.shape[::-1] + (1,), dtype=kspace.dtype)
    power = sp.alg.PowerMethod(lambda x: gram @ x, maps,
                               norm_func=lambda x: np.sum(np.abs(x) ** 2, axis=-2, keepdims=True) ** 0.5,
                               max_iter=iterations)
    while not power.done():
        power.update()
    out = maps.T[0]
    out *= np.conj(out[0] / np.maximum(np.abs(out[0]), 1e-12))
    return (out * (power.max_eig.T[0] > crop)).astype(np.complex64)


def espirit_sensitivities(kspace: np.ndarray | torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """ESPIRiT coil sensitivities ``(D, coils, H, W)`` complex64 of k-space ``(D, coils, H, W)`` (complex) sampled
    with the line ``mask`` ``(W,)`` (or ``(H, W)``), from its fully sampled centre columns (:func:`centre_lines`),
    slice by slice (:func:`espirit_slice`). Normalised so that ``sum_k |S_k|^2`` is 1 inside the object."""
    k = kspace.numpy() if isinstance(kspace, torch.Tensor) else np.asarray(kspace)
    if k.ndim != 4 or not np.iscomplexobj(k):
        raise InputError(f"coil sensitivities need complex k-space (D, coils, H, W), got {k.dtype} {k.shape}")
    first, stop = calibration_lines(mask)
    return np.stack([espirit_slice(s.astype(np.complex64), first, stop) for s in k])


class SensitivityFourier(ForwardModel):
    """``y_k = M * F(S_k x)``: undersampled Cartesian k-space of coil ``k`` of one complex object ``x`` per slice.

    Args:
        mask: ``(W,)`` line mask (columns = phase encodes, as MONAI's mask transforms) or ``(H, W)``.
        maps: coil sensitivities, complex ``(coils, H, W)`` (one set for every slice) or ``(D, coils, H, W)`` (one
            per slice, :meth:`slices` selects them), normalised so that ``sum_k |S_k|^2`` is 1 inside the object
            (ESPIRiT's convention).

    Shapes: images ``(B, 2, H, W)`` real, channels ``[re, im]`` of the object; k-space ``(B, coils, H, W, 2)`` (last
    axis real/imaginary), centred orthonormal FFT, unmeasured entries zero. With per-slice maps, ``B`` is a multiple
    of the number of slices and each slice's rows are consecutive (the fit's decoders of one slice). ``baseline(y)``
    is the zero-filled root-sum-of-squares magnitude ``(B, 1, H, W)`` (as :class:`~.mri.CartesianFourier`, so both
    scale the data alike); ``to_image`` the magnitude ``(B, H, W)``; ``finalize(x, y)`` keeps the measured samples of
    each coil and takes ``S_k x``'s k-space elsewhere, and returns the coil images (complex ``(B, coils, H, W)``),
    whose root-sum-of-squares is the result, as ConvDecoder's last step (Darestani & Heckel 2021).
    """

    kind = "sense"
    baseline_name = "zero-filled"
    output = "linear"
    measurement_ndim = 5

    def __init__(self, mask, maps) -> None:
        super().__init__()
        maps_t = maps.detach().cpu() if isinstance(maps, torch.Tensor) else torch.from_numpy(np.asarray(maps))
        if not maps_t.is_complex():
            raise InputError(f"coil sensitivities must be complex, got {maps_t.dtype}")
        if maps_t.ndim == 3:
            maps_t = maps_t[None]
        if maps_t.ndim != 4:
            raise InputError(f"coil sensitivities must be (coils, H, W) or (D, coils, H, W), got {tuple(maps_t.shape)}")
        if not torch.isfinite(torch.view_as_real(maps_t)).all():
            raise InputError("coil sensitivities contain NaN/Inf values")
        self.register_buffer("mask", kspace_mask(mask))
        self.register_buffer("maps", maps_t.to(torch.complex64).contiguous())

    @property
    def coils(self) -> int:
        return int(self.maps.shape[1])

    @property
    def acceleration(self) -> float:
        """Fully sampled points / sampled points."""
        return float(self.mask.numel() / (self.mask != 0).sum())

    def slices(self, start: int, stop: int) -> SensitivityFourier:
        """The operator of slices ``start:stop`` (their maps; the same object when the maps are shared)."""
        if self.maps.shape[0] == 1:
            return self
        return self._with_buffer("maps", self.maps[start:stop])

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        """``(2, H, W)`` for k-space ``(B, coils, H, W, 2)``."""
        shape = tuple(measurements.shape)
        if len(shape) != 5 or shape[-1] != 2 or shape[1] != self.coils:
            raise InputError(f"k-space must be (B, coils={self.coils}, H, W, 2), got shape {shape}")
        h, w = shape[2:4]
        if tuple(self.maps.shape[2:]) != (h, w):
            raise InputError(f"k-space of {h}x{w} does not match the coil sensitivities of "
                             f"{self.maps.shape[2]}x{self.maps.shape[3]}")
        if self.maps.shape[0] not in (1, shape[0]):
            raise InputError(f"{shape[0]} slices of k-space but coil sensitivities for {self.maps.shape[0]}")
        check_mask_fits(self.mask, h, w)
        return 2, h, w

    def prepare(self, measurements, path=None) -> torch.Tensor:
        """:meth:`ForwardModel.prepare`, and every sample outside the mask set to 0: it was not measured (fully
        sampled k-space given with a mask is undersampled by it)."""
        return super().prepare(measurements, path) * self.mask.cpu()[..., None]

    def _coerce(self, t: torch.Tensor) -> torch.Tensor:
        """Complex k-space ``(D, coils, H, W)`` -> ``(D, coils, H, W, 2)``."""
        return torch.view_as_real(t.to(torch.complex64).contiguous()) if t.is_complex() else t

    def _maps_for(self, batch: int) -> torch.Tensor:
        """``(batch or 1, coils, H, W)``: each slice's maps repeated for its consecutive rows."""
        slices = self.maps.shape[0]
        if slices == 1:
            return self.maps
        if batch % slices:
            raise InputError(f"{batch} images for coil sensitivities of {slices} slices")
        return self.maps.repeat_interleave(batch // slices, dim=0)

    def _coil_images(self, x: torch.Tensor) -> torch.Tensor:
        """Complex coil images ``(B, coils, H, W)`` of objects ``x`` ``(B, 2, H, W)``."""
        obj = torch.complex(x[:, 0].float(), x[:, 1].float())
        return self._maps_for(x.shape[0]) * obj[:, None]

    def _kspace(self, x: torch.Tensor) -> torch.Tensor:
        return fft2c(torch.view_as_real(self._coil_images(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._kspace(x) * self.mask[..., None]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        coil = torch.view_as_complex(ifft2c(y * self.mask[..., None]).contiguous())
        obj = (self._maps_for(y.shape[0]).conj() * coil).sum(dim=1)
        return torch.stack([obj.real, obj.imag], dim=1)

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return rss(torch.view_as_complex(ifft2c(y * self.mask[..., None]).contiguous()))

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return rss(x)[:, 0]

    def finalize(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        measured = y.to(x.device).float()
        merged = ifft2c(torch.where(self.mask[..., None] != 0, measured, self._kspace(x)))
        return torch.view_as_complex(merged.contiguous())

    def noise_floor(self, y: torch.Tensor) -> torch.Tensor:
        """The misfit the noise of k-space ``y`` alone gives
        (:func:`~dd_medical.core.operators.mri.kspace_noise_floor`)."""
        return kspace_noise_floor(y, self.mask)

    def unmeasured(self, x: torch.Tensor) -> torch.Tensor:
        """The coils' k-space ``(B, coils, H, W, 2)`` of objects ``x`` where the mask is 0 (zero where it samples)."""
        return self._kspace(x) * (self.mask == 0)[..., None]


def kspace_model(kspace: np.ndarray | torch.Tensor, mask: np.ndarray, coil_maps: str = "espirit"
                 ) -> CartesianFourier | SensitivityFourier:
    """The forward model of k-space ``(D, coils, H, W)`` (complex, or real with a last axis of 2) sampled with
    ``mask`` (``(W,)`` lines or ``(H, W)``).

    For several coils and ``coil_maps="espirit"``: a :class:`SensitivityFourier` with ESPIRiT sensitivities from the
    fully sampled centre (:func:`espirit_sensitivities`). For one coil, ``coil_maps="none"``, or a mask without a
    fully sampled centre of :data:`MIN_CALIBRATION_LINES` lines (said in a warning): a
    :class:`~.mri.CartesianFourier` that fits every coil image (root-sum-of-squares result).
    """
    if coil_maps not in COIL_MAPS:
        raise InputError(f"unknown coil_maps {coil_maps!r}; choose one of {', '.join(COIL_MAPS)}")
    k = kspace.numpy() if isinstance(kspace, torch.Tensor) else np.asarray(kspace)
    if not np.iscomplexobj(k) and k.ndim == 5 and k.shape[-1] == 2:
        k = k[..., 0] + 1j * k[..., 1]
    if k.ndim != 4:
        raise InputError(f"k-space must be (slices, coils, H, W), got shape {k.shape}")
    mask = np.asarray(mask, dtype=np.float32)
    if coil_maps == "espirit" and k.shape[1] > 1:
        if mask.shape[-1] != k.shape[-1]:
            raise InputError(f"mask of shape {mask.shape} for k-space of width {k.shape[-1]}")
        try:
            calibration_lines(mask)
        except InputError as err:
            log.warning("%s; fitting the coil images instead (root-sum-of-squares)", err.problem)
        else:
            return SensitivityFourier(mask, espirit_sensitivities(k, mask))
    return CartesianFourier(mask, coils=k.shape[1])
