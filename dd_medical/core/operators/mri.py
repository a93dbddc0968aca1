"""Undersampled Cartesian MRI, k-space in MONAI's layout and through its centred FFTs (``fft_utils_t``)."""

from __future__ import annotations

import math

import torch

from ...errors import InputError
from .base import ForwardModel, as_float_tensor


def fft2c(images: torch.Tensor, is_complex: bool = True) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the image axes (MONAI's ``fftn_centered_t``): images ``(..., H, W, 2)``
    (last axis real/imaginary; ``is_complex=False``: real ``(..., H, W)``) -> k-space ``(..., H, W, 2)``."""
    from monai.networks.blocks.fft_utils_t import fftn_centered_t  # importing monai takes seconds: only MRI pays

    return fftn_centered_t(images, spatial_dims=2, is_complex=is_complex)


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT (MONAI's ``ifftn_centered_t``), the adjoint of :func:`fft2c`: k-space
    ``(..., H, W, 2)`` -> images ``(..., H, W, 2)``, last axis real/imaginary."""
    from monai.networks.blocks.fft_utils_t import ifftn_centered_t

    return ifftn_centered_t(kspace, spatial_dims=2, is_complex=True)


def rss(images: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares ``(B, 1, H, W)`` over the channels of coil images (MONAI's ``root_sum_of_squares`` of
    their magnitudes): complex ``(B, coils, H, W)``, or real ``(B, 2*coils, H, W)`` (``[re_0, im_0, re_1, ...]``)
    or ``(B, coils, H, W)``."""
    from monai.apps.reconstruction.mri_utils import root_sum_of_squares

    return root_sum_of_squares(images.abs(), spatial_dim=1)[:, None]


def kspace_mask(mask) -> torch.Tensor:
    """A checked k-space mask as a float32 buffer: ``(W,)`` lines become ``(1, W)``, ``(H, W)`` stays."""
    mask_t = as_float_tensor(mask, "k-space mask")
    if mask_t.ndim not in (1, 2):
        raise InputError(f"k-space mask must be (W,) lines or (H, W), got shape {tuple(mask_t.shape)}")
    if not bool((mask_t != 0).any()):
        raise InputError("k-space mask samples nothing")
    return mask_t if mask_t.ndim == 2 else mask_t[None, :]


def check_mask_fits(mask: torch.Tensor, height: int, width: int) -> None:
    """:class:`InputError` unless a :func:`kspace_mask` fits k-space of ``height`` x ``width``."""
    mh, mw = mask.shape
    if mw != width or (mh != 1 and mh != height):
        raise InputError(f"k-space of {height}x{width} does not match the mask of shape "
                         f"{(mw,) if mh == 1 else (mh, mw)}")


#: Fraction of the k-space rows (readout frequencies) at each end in which :func:`kspace_noise_floor` measures the
#: noise: there the signal of an image has decayed and the measured samples are mostly noise.
NOISE_ROWS = 1 / 16


def kspace_noise_floor(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64: the data misfit that the noise of k-space ``y`` ``(B, coils, H, W, 2)`` alone gives a perfect
    fit, ``sigma * sqrt(n) / ||y||`` over the ``n`` measured real and imaginary samples (``mask`` ``(H, W)`` or
    ``(1, W)``), the misfit of :func:`~dd_medical.core.reconstruction_check.data_misfit`. ``sigma`` is the noise's
    standard deviation per real component, the median absolute value of the measured samples in the outer
    :data:`NOISE_ROWS` of the rows at each end (highest readout frequencies) divided by 0.6745; ``nan`` where none
    was measured there. An image with strong detail at those frequencies (sharp edges in a small matrix) adds to it:
    the estimate errs high, never much low."""
    height, width = y.shape[-3], y.shape[-2]
    rows = max(1, round(height * NOISE_ROWS))
    measured = (mask != 0).to(y.device).expand(height, width)
    edge = torch.zeros(height, dtype=torch.bool, device=y.device)
    edge[:rows] = True
    edge[-rows:] = True
    where = measured & edge[:, None]
    count = 2 * y.shape[1] * int(measured.sum())
    floors = []
    for k in y.double():
        noise = k[:, where].abs().median() / 0.6744897501960817 if bool(where.any()) else torch.tensor(math.nan)
        size = k.pow(2).sum().sqrt()
        floors.append(noise * count**0.5 / size if float(size) > 0 else torch.tensor(math.nan))
    return torch.stack(floors).cpu()


class CartesianFourier(ForwardModel):
    """``y = M * F(x)`` per coil: undersampled Cartesian k-space.

    Args:
        mask: ``(W,)`` line mask (columns = phase encodes, as MONAI's mask transforms) or ``(H, W)``; bool or 0/1
            float, numpy or torch.
        coils: number of coils; the coil images are fitted directly (no sensitivity maps).
        real: the object is real-valued (k-space simulated from magnitude images, or phase-corrected data): images
            are ``(B, coils, H, W)`` with no imaginary channels and the decoder's output is a sigmoid. Leave
            ``False`` for scanner k-space, whose images carry phase.

    Shapes: images ``(B, 2*coils, H, W)`` real, channels ``[re_0, im_0, re_1, im_1, ...]`` (``real``:
    ``(B, coils, H, W)``); k-space ``(B, coils, H, W, 2)`` (last axis real/imaginary), centred orthonormal FFT;
    unmeasured entries are zero. ``baseline(y)`` is the zero-filled root-sum-of-squares magnitude ``(B, 1, H, W)``;
    ``to_image`` the RSS magnitude ``(B, H, W)``; ``finalize(x, y)`` keeps the measured samples and takes ``x``'s
    k-space only where nothing was measured.
    """

    kind = "mri"
    baseline_name = "zero-filled"
    measurement_ndim = 5

    def __init__(self, mask, coils: int = 1, real: bool = False) -> None:
        super().__init__()
        if coils < 1:
            raise InputError(f"coils must be >= 1, got {coils}")
        self.register_buffer("mask", kspace_mask(mask))  # (H, W) or (1, W)
        self.coils = int(coils)
        self.real = bool(real)
        self.output = "sigmoid" if self.real else "linear"  # a real object is non-negative; coil images signed

    @property
    def acceleration(self) -> float:
        """Fully sampled points / sampled points."""
        return float(self.mask.numel() / (self.mask != 0).sum())

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        """``(2*coils, H, W)`` (``real``: ``(coils, H, W)``) for k-space ``(B, coils, H, W, 2)``."""
        shape = tuple(measurements.shape)
        if len(shape) != 5 or shape[-1] != 2 or shape[1] != self.coils:
            raise InputError(f"k-space must be (B, coils={self.coils}, H, W, 2), got shape {shape}")
        h, w = shape[2:4]
        check_mask_fits(self.mask, h, w)
        return (1 if self.real else 2) * self.coils, h, w

    def prepare(self, measurements, path=None) -> torch.Tensor:
        """:meth:`ForwardModel.prepare`, and every sample outside the mask set to 0: it was not measured (fully
        sampled k-space given with a mask is undersampled by it)."""
        return super().prepare(measurements, path) * self.mask.cpu()[..., None]

    def _coerce(self, t: torch.Tensor) -> torch.Tensor:
        """Complex k-space ``(D, coils, H, W)`` (one coil: ``(D, H, W)`` or ``(H, W)``) -> ``(..., 2)``."""
        if not t.is_complex():
            return t
        if t.ndim == 3 and self.coils == 1:
            t = t[:, None]
        elif t.ndim == 2 and self.coils == 1:
            t = t[None, None]
        return torch.view_as_real(t.to(torch.complex64).contiguous())

    def _kspace(self, x: torch.Tensor) -> torch.Tensor:
        """Full (unmasked) k-space ``(B, coils, H, W, 2)`` of images ``x``."""
        if self.real:
            return fft2c(x.float(), is_complex=False)
        b, c, h, w = x.shape
        return fft2c(x.reshape(b, c // 2, 2, h, w).permute(0, 1, 3, 4, 2).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._kspace(x) * self.mask[..., None]

    def _zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Coil images ``(B, coils, H, W, 2)`` (last axis real/imaginary) of the masked k-space."""
        return ifft2c(y * self.mask[..., None])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        images = self._zero_filled(y)
        if self.real:
            return images[..., 0].contiguous()
        b, c, h, w, _ = images.shape
        return images.permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, w)

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return rss(torch.view_as_complex(self._zero_filled(y)))

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return rss(x)[:, 0]

    def finalize(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Coil images whose k-space is the measured ``y`` where sampled and ``x``'s own elsewhere (the last step of
        ConvDecoder-style reconstructions): complex ``(B, coils, H, W)``; for a ``real`` object, their real part
        (a mask that is not point-symmetric leaves an imaginary part)."""
        measured = y.to(x.device).float()
        merged = ifft2c(torch.where(self.mask[..., None] != 0, measured, self._kspace(x)))
        return merged[..., 0] if self.real else torch.view_as_complex(merged)

    def noise_floor(self, y: torch.Tensor) -> torch.Tensor:
        """The misfit the noise of k-space ``y`` alone gives (:func:`kspace_noise_floor`)."""
        return kspace_noise_floor(y, self.mask)

    def unmeasured(self, x: torch.Tensor) -> torch.Tensor:
        """The k-space ``(B, coils, H, W, 2)`` of coil images ``x`` where the mask is 0 (zero where it samples)."""
        return self._kspace(x) * (self.mask == 0)[..., None]
