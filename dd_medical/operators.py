"""Forward models ``A`` that map a batch of images ``(B, C, H, W)`` to measurements.

Every operator has ``forward(x)``, ``adjoint(y)`` and ``baseline(y)`` (a cheap reconstruction), is batched
over ``B``, differentiable and device-agnostic. :func:`dd_medical.fitting.fit` only ever sees this interface.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .errors import InputError


def mean_squared_residual(predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean squared residual per instance over all but the first axis (complex as real/imaginary pairs):
    the data term a decoder is fitted with unless the operator has its own ``data_loss``."""
    diff = predicted - measured
    if diff.is_complex():
        diff = torch.view_as_real(diff)
    return diff.float().pow(2).flatten(1).mean(dim=1)


class Identity:
    """Denoising: the measurements are the (noisy) image itself, ``(B, C, H, W)`` in [0, 1]."""

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        """``(C, H, W)`` of the image that explains ``measurements`` of shape ``(B, C, H, W)``."""
        if measurements.ndim != 4:
            raise ValueError(f"Identity expects measurements of shape (B, C, H, W), got {tuple(measurements.shape)}")
        return tuple(measurements.shape[1:])  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return y


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers


def _on(cache: dict, key: str, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, moved once and cached (operators are built on the CPU, used anywhere)."""
    hit = cache.get((key, device))
    if hit is None:
        hit = tensor.to(device)
        cache[(key, device)] = hit
    return hit


def _as_float_tensor(array, name: str) -> torch.Tensor:
    t = array.detach().cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array).copy())
    if t.is_complex():
        raise InputError(f"{name} is complex; it must hold real weights (0/1 or bool)")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN/Inf values")
    return t


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


# ----------------------------------------------------------------------------------------------------------------
# k-space masks (columns = phase-encoding lines, MONAI's convention)


def random_mask(width: int, acceleration: float = 4.0, center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """Random line mask as MONAI's ``RandomKspaceMask``: ``(W,)`` float32 of 0/1.

    The ``round(W * center_fraction)`` central columns are always sampled; every other column with probability
    ``(W / acceleration - n_centre) / (W - n_centre)``, so about ``W / acceleration`` lines in all.
    """
    _check_acceleration(acceleration, center_fraction)
    mask, num_low = _center_lines(width, center_fraction)
    if num_low < width:
        prob = max(0.0, (width / acceleration - num_low) / (width - num_low))
        mask |= np.random.default_rng(seed).uniform(size=width) < prob
    return mask.astype(np.float32)


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


# ----------------------------------------------------------------------------------------------------------------
# MRI


def _fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes (``monai.data.fft_utils.fftn_centered_t``)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def _ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT (``monai.data.fft_utils.ifftn_centered_t``), the adjoint of ``_fft2c``."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def _rss(images: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares ``(B, 1, H, W)`` over the coils of complex (or real) coil images ``(B, coils, H, W)``."""
    return images.abs().pow(2).sum(dim=1, keepdim=True).sqrt()


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares magnitude ``(B, 1, H, W)`` of coil images ``(B, 2*coils, H, W)`` ([re_0, im_0, ...])."""
    return _rss(x)


class CartesianFourier:
    """Undersampled Cartesian MRI: ``y = M * F(x)`` per coil, k-space in MONAI's layout.

    Args:
        mask: ``(W,)`` line mask (columns = phase encodes, as MONAI's mask transforms) or ``(H, W)`` mask; bool or
            0/1 float, numpy or torch.
        coils: number of coils; the coil images are fitted directly (no sensitivity maps).
        real: the object is real-valued (k-space simulated from magnitude images, or phase-corrected data): the
            image is ``(B, coils, H, W)`` with no imaginary channels, which halves the unknowns. Leave ``False``
            for scanner k-space, whose images carry phase.

    Shapes: image ``x`` is ``(B, 2*coils, H, W)`` real, channels ``[re_0, im_0, re_1, im_1, ...]`` (``real``:
    ``(B, coils, H, W)``); k-space ``y`` is ``(B, coils, H, W, 2)`` (last axis real/imaginary), centred orthonormal
    FFT (``fftn_centered_t``). Unmeasured k-space entries are zero. ``baseline(y)`` is the zero-filled
    root-sum-of-squares magnitude image ``(B, 1, H, W)``.
    """

    def __init__(self, mask, coils: int = 1, real: bool = False) -> None:
        mask_t = _as_float_tensor(mask, "k-space mask")
        if mask_t.ndim not in (1, 2):
            raise InputError(f"k-space mask must be (W,) lines or (H, W), got shape {tuple(mask_t.shape)}")
        if not bool((mask_t != 0).any()):
            raise InputError("k-space mask samples nothing")
        if coils < 1:
            raise InputError(f"coils must be >= 1, got {coils}")
        self.mask = mask_t if mask_t.ndim == 2 else mask_t[None, :]  # (H, W) or (1, W), broadcast over rows
        self.coils = int(coils)
        self.real = bool(real)
        self._cache: dict = {}

    @property
    def acceleration(self) -> float:
        """Fully sampled points / sampled points."""
        return float(self.mask.numel() / (self.mask != 0).sum())

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        """``(2*coils, H, W)`` (``real``: ``(coils, H, W)``) for k-space ``(B, coils, H, W, 2)``; :class:`InputError`
        if it does not match."""
        shape = tuple(measurements.shape)
        if len(shape) != 5 or shape[-1] != 2 or shape[1] != self.coils:
            raise InputError(f"k-space must be (B, coils={self.coils}, H, W, 2), got shape {shape}")
        h, w = shape[2:4]
        mh, mw = self.mask.shape
        if mw != w or (mh != 1 and mh != h):
            raise InputError(f"k-space of {h}x{w} does not match the mask of shape "
                             f"{(mw,) if mh == 1 else (mh, mw)}")
        return (1 if self.real else 2) * self.coils, h, w

    def _mask(self, device: torch.device) -> torch.Tensor:
        return _on(self._cache, "mask", self.mask, device)[..., None]  # (H|1, W, 1)

    def _kspace(self, x: torch.Tensor) -> torch.Tensor:
        """Full (unmasked) complex k-space ``(B, coils, H, W)`` of images ``x``."""
        b, c, h, w = x.shape
        if self.real:
            complex_images = torch.complex(x.float(), torch.zeros_like(x, dtype=torch.float32))
        else:
            complex_images = torch.view_as_complex(x.reshape(b, c // 2, 2, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return _fft2c(complex_images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(self._kspace(x)) * self._mask(x.device)

    def _zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Complex coil images ``(B, coils, H, W)`` of the masked k-space."""
        return _ifft2c(torch.view_as_complex((y * self._mask(y.device)).contiguous()))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        images = self._zero_filled(y)
        if self.real:
            return images.real.contiguous()
        b, c, h, w = images.shape
        return torch.view_as_real(images).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, w)

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return _rss(self._zero_filled(y))

    def magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """RSS magnitude ``(B, 1, H, W)`` of coil images ``(B, 2*coils, H, W)`` (``real``: ``(B, coils, H, W)``)."""
        return magnitude(x)

    def disagreement(self, members: torch.Tensor) -> torch.Tensor:
        """How much independently fitted images ``(B, M, C, H, W)`` disagree where nothing was measured: the
        members' mean energy of ``F(x_m) - mean_m F(x_m)`` over the unmeasured k-space entries, ``(B,)``.

        Where decoders started from different random weights agree on the missing k-space, the prior determines it;
        where they do not, their guesses are unreliable. Comparable between fits of the same measurements."""
        b, m = members.shape[:2]
        kspace = self._kspace(members.flatten(0, 1).float())
        kspace = kspace.view(b, m, *kspace.shape[1:])
        deviation = (kspace - kspace.mean(dim=1, keepdim=True)).abs().square()
        unmeasured = (self._mask(members.device)[..., 0] == 0).float()  # (H|1, W)
        return (deviation * unmeasured).sum(dim=(2, 3, 4)).mean(dim=1)

    def consistent_magnitude(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Data consistency: RSS magnitude ``(B, 1, H, W)`` of the coil images whose k-space is the measured ``y``
        where sampled and ``x``'s own k-space elsewhere (the final step of ConvDecoder-style reconstructions); for a
        ``real`` object, of the real part of those images."""
        mask = self._mask(x.device)[..., 0] != 0
        measured = torch.view_as_complex(y.to(x.device).float().contiguous())
        merged = _ifft2c(torch.where(mask, measured, self._kspace(x)))
        # real object: the nearest real image (a mask that is not point-symmetric leaves an imaginary part)
        return _rss(merged.real if self.real else merged)


# ----------------------------------------------------------------------------------------------------------------
# CT


def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor from distinct (row, column, value) entries."""
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=shape[0]))])
    return torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(cols[order]),
                                   torch.from_numpy(values[order]), size=shape)


class _SparseLinear(torch.autograd.Function):
    """``y = A x`` with a CSR matrix and its precomputed CSR transpose (exact adjoint, differentiable in ``x``)."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return (matrix @ x.T).T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, (ctx.transpose @ grad.T).T


def _ramp_response(size: int, window: str) -> torch.Tensor:
    """Frequency response of the discrete Ram-Lak filter (spatial design, as scikit-image) for ``size`` samples."""
    n = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    response = 2 * np.real(np.fft.fft(f))
    if window == "hann":
        response *= 0.5 + 0.5 * np.cos(2 * np.pi * np.fft.fftfreq(size))
    elif window != "ramp":
        raise InputError(f"unknown FBP filter {window!r}; choose 'ramp' or 'hann'")
    return torch.from_numpy(response.astype(np.float32))


class ParallelBeamRadon:
    """2D parallel-beam CT: sinogram ``(B, 1, views, detectors)`` of an image ``(B, 1, H, W)``.

    A precomputed sparse system matrix (pixel-driven: each pixel centre projects onto the detector and its value
    is split linearly between the two nearest bins), so ``adjoint`` is its exact transpose; runs on CPU and GPU.

    Args:
        angles_deg: projection angles in degrees, e.g. ``np.linspace(0, 180, 60, endpoint=False)`` (sparse view)
            or ``np.linspace(0, 120, 80, endpoint=False)`` (limited angle).
        image_size: ``N`` or ``(H, W)`` in pixels (pixel size 1, image centred on the rotation axis).
        detectors: number of detector bins (spacing 1 pixel); default ``ceil(sqrt(H^2 + W^2)) + 1``, so every
            pixel is seen from every angle.
        subpixels: each pixel is projected as ``subpixels x subpixels`` equal sub-pixels (default 1: its centre
            only). The centre-only (pixel-driven) projector aliases: a sinogram it makes has a fine moire pattern
            that FBP turns into streaks. Measured on ``CT_small.dcm`` (128 px, 192 views, ramp FBP of the noise-free
            sinogram against the image): 30.50 dB with 1, 35.12 dB with 2, 35.03 with 4. Use 2 to *simulate*
            scans, and to reconstruct data that were not made by this same operator (real sinograms, scans
            simulated on a finer grid: :data:`dd_medical.reconstruction.CT_SUBPIXELS`); it has 1.3x the entries.
        precondition: :meth:`data_loss`, the data term a decoder is fitted with, weights the residual's
            frequencies along the detector by ``|f| + PRECONDITION_EPSILON`` (default ``True``), as the ramp filter
            of FBP does: ``A^T R A`` is close to the identity, where ``A^T A`` damps fine detail as ``1 / |f|``, so
            gradient descent reaches the fine detail in far fewer steps. Same minimisers for consistent data.
            Measured (693_UNCR.dcm 128 px, 60 views, k=64, noise-free): 39.1 dB after 4,000 steps (Adam 0.01 ->
            0.001), 41.6 after 8,000 and 43.1 after 12,000, against 31.0 dB after 4,000 with the plain residual.
    """

    #: Weight of the zero frequency relative to the Nyquist frequency's 0.5 in :meth:`data_loss` (measured at
    #: 128 px, 60 views, 2,000 steps: 0.01 36.8 dB, 0.001 36.3; 0.003 then chosen with the step decay, 39.3).
    PRECONDITION_EPSILON = 0.003

    def __init__(self, angles_deg, image_size: int | tuple[int, int], detectors: int | None = None,
                 precondition: bool = True, subpixels: int = 1) -> None:
        angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
        if angles.ndim != 1 or angles.size == 0:
            raise InputError("CT geometry needs at least one view (got zero angles)")
        if not np.all(np.isfinite(angles)):
            raise InputError("CT angles contain NaN/Inf")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(h, w) < 1:
            raise InputError(f"image size must be positive, got {(h, w)}")
        if int(subpixels) != subpixels or subpixels < 1:
            raise InputError(f"subpixels must be a whole number >= 1, got {subpixels}")
        self.height, self.width = int(h), int(w)
        self.precondition = bool(precondition)
        self.subpixels = int(subpixels)
        self.angles_deg = angles
        self.detectors = int(detectors or int(np.ceil(np.hypot(h, w))) + 1)
        rows, cols, values = self._system_entries()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = _csr(rows, cols, values, (self.views * self.detectors, self.height * self.width))
            self.transpose = _csr(cols, rows, values, (self.height * self.width, self.views * self.detectors))
        self._cache: dict = {}

    @property
    def views(self) -> int:
        return int(self.angles_deg.size)

    def _system_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, column, value) of the non-zero entries; rows are ``view * detectors + bin``, columns pixels.

        Each (sub-)pixel centre projects onto the detector and its value is split linearly between the two nearest
        bins; with sub-pixels, each carries ``1 / subpixels^2`` of its pixel and the entries are summed per
        (bin, pixel).
        """
        h, w, n, s = self.height, self.width, self.detectors, self.subpixels
        ys, xs = np.mgrid[0:h, 0:w]
        offsets = (np.arange(s) + 0.5) / s - 0.5  # sub-pixel centres, in pixels from the pixel centre
        off_x, off_y = (o.ravel()[None, :] for o in np.meshgrid(offsets, offsets))
        xs = (xs - (w - 1) / 2).ravel()[:, None] + off_x  # (pixels, s * s)
        ys = ((h - 1) / 2 - ys).ravel()[:, None] - off_y  # row 0 at the top
        pixels = np.arange(h * w)
        rows, cols, vals = [], [], []
        for v, theta in enumerate(np.deg2rad(self.angles_deg)):
            u = xs * np.cos(theta) + ys * np.sin(theta) + (n - 1) / 2
            lo = np.floor(u).astype(np.int64)
            frac = u - lo
            if s == 1:
                bins, weights = (lo[:, 0], lo[:, 0] + 1), (1 - frac[:, 0], frac[:, 0])
            else:  # sum the sub-pixels' weights per (pixel, bin): bins lo.min() .. lo.max() + 1 of each pixel
                first = lo.min(axis=1)
                span = int((lo.max(axis=1) - first).max()) + 2
                table = np.zeros((h * w, span))
                local = lo - first[:, None]
                np.add.at(table, (np.repeat(pixels, s * s), local.ravel()), (1 - frac).ravel())
                np.add.at(table, (np.repeat(pixels, s * s), local.ravel() + 1), frac.ravel())
                table /= s * s
                bins = tuple(first + j for j in range(span))
                weights = tuple(table[:, j] for j in range(span))
            for idx, weight in zip(bins, weights, strict=True):
                keep = (idx >= 0) & (idx < n) & (weight > 0)
                rows.append(v * n + idx[keep])
                cols.append(pixels[keep])
                vals.append(weight[keep])
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        """``(1, H, W)`` for a sinogram ``(B, 1, views, detectors)``; :class:`InputError` if it does not match."""
        shape = tuple(measurements.shape)
        if len(shape) != 4 or shape[1] != 1 or shape[2:] != (self.views, self.detectors):
            raise InputError(f"sinogram must be (B, 1, views={self.views}, detectors={self.detectors}), "
                             f"got shape {shape}")
        return 1, self.height, self.width

    def _matrices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (_on(self._cache, "A", self.matrix, device), _on(self._cache, "AT", self.transpose, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        matrix, transpose = self._matrices(x.device)
        flat = _SparseLinear.apply(matrix, transpose, x.reshape(x.shape[0], -1).float())
        return flat.view(x.shape[0], 1, self.views, self.detectors)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        matrix, transpose = self._matrices(y.device)
        flat = _SparseLinear.apply(transpose, matrix, y.reshape(y.shape[0], -1).float())
        return flat.view(y.shape[0], 1, self.height, self.width)

    def data_loss(self, predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """``(B,)`` data misfit of predicted sinograms ``(B, 1, views, detectors)``, the term a decoder is fitted with.

        With ``precondition`` the squared residual is weighted per detector frequency by ``|f| + epsilon``
        (``f`` in cycles per bin, zero-padded to twice the detectors; scaled so that a flat unit weight would give
        about the mean squared residual); otherwise the mean squared residual.
        """
        if not self.precondition:
            return mean_squared_residual(predicted, measured)
        residual = (predicted - measured).float()
        size = 2 * self.detectors
        weight = torch.fft.rfftfreq(size, device=residual.device) + self.PRECONDITION_EPSILON
        spectrum = torch.fft.rfft(residual, n=size, dim=-1)
        return 4 * (spectrum.real.pow(2) + spectrum.imag.pow(2)).mul(weight).flatten(1).mean(dim=1)

    def fbp(self, sinogram: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection ``(B, 1, H, W)`` of ``(B, 1, views, detectors)``; ``filter`` "ramp" or "hann".

        Each view is weighted by ``pi / views`` (views assumed evenly spread over 180 degrees; a limited-angle
        set simply misses the wedge it does not cover).
        """
        n = self.detectors
        size = max(64, int(2 ** np.ceil(np.log2(2 * n))))
        response = _ramp_response(size, filter).to(sinogram.device)
        spectrum = torch.fft.rfft(sinogram.float(), n=size, dim=-1) * response[: size // 2 + 1]
        filtered = torch.fft.irfft(spectrum, n=size, dim=-1)[..., :n]
        return self.adjoint(filtered) * (np.pi / (2 * self.views))

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return self.fbp(y, "ramp")


# ----------------------------------------------------------------------------------------------------------------
# Inpainting and compressive sensing


class PixelMask:
    """Inpainting: ``y = mask * x`` for images ``(B, C, H, W)``; missing pixels are 0 in ``y``.

    Args:
        mask: ``(H, W)`` bool or 0/1 (1 = pixel observed), numpy or torch.
    """

    def __init__(self, mask) -> None:
        mask_t = _as_float_tensor(mask, "pixel mask")
        if mask_t.ndim != 2:
            raise InputError(f"pixel mask must be (H, W), got shape {tuple(mask_t.shape)}")
        if not bool((mask_t != 0).any()):
            raise InputError("pixel mask observes no pixel")
        self.mask = mask_t
        self._cache: dict = {}

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        shape = tuple(measurements.shape)
        if len(shape) != 4 or shape[2:] != tuple(self.mask.shape):
            raise InputError(f"masked image must be (B, C, {self.mask.shape[0]}, {self.mask.shape[1]}), "
                             f"got shape {shape}")
        return tuple(shape[1:])  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _on(self._cache, "mask", self.mask, x.device)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * _on(self._cache, "mask", self.mask, y.device)

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return self.adjoint(y)


class GaussianProjection:
    """Compressive sensing: ``y = G x.flatten()`` with ``G`` an ``(m, C*H*W)`` matrix of N(0, 1/m) entries.

    For small images (``G`` is dense). Measurements are ``(B, m)``; ``baseline(y)`` is the minimum-norm
    least-squares image ``G^+ y``.

    Args:
        m: number of measurements.
        image_shape: ``(C, H, W)`` or ``(H, W)`` of the image.
        seed: seed of ``G``.
    """

    def __init__(self, m: int, image_shape: tuple[int, ...], seed: int = 0) -> None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"image_shape must be (C, H, W) or (H, W), got {image_shape}")
        if m < 1:
            raise InputError(f"need at least one measurement, got m={m}")
        self.shape = shape
        self.m = int(m)
        generator = torch.Generator().manual_seed(int(seed))
        self.matrix = torch.randn(self.m, int(np.prod(shape)), generator=generator) / np.sqrt(self.m)
        self._cache: dict = {}

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        if measurements.ndim != 2 or measurements.shape[1] != self.m:
            raise InputError(f"measurements must be (B, m={self.m}), got shape {tuple(measurements.shape)}")
        return self.shape  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ _on(self._cache, "G", self.matrix, x.device).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ _on(self._cache, "G", self.matrix, y.device)).view(y.shape[0], *self.shape)

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        if "pinv" not in self._cache:
            self._cache["pinv"] = torch.linalg.pinv(self.matrix.double()).float()
        pinv = _on(self._cache, "pinv_dev", self._cache["pinv"], y.device)
        return (y @ pinv.T).view(y.shape[0], *self.shape)
