"""2D parallel-beam CT: a sparse system matrix, its exact transpose, FBP, and HU <-> attenuation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ...errors import InputError
from .base import ForwardModel, as_float_tensor, mean_squared_residual

#: Sub-pixels per pixel side for scans this operator did not make itself (real sinograms, scans simulated on a
#: finer grid): the one-point projector is about 1% off the line integrals of its own pixels.
SUBPIXELS = 2
#: :meth:`ParallelBeamRadon.with_counts`: rays that detected at least this many photons get the full weight.
FULL_WEIGHT_COUNTS = 100.0
#: :meth:`ParallelBeamRadon.with_counts`: rays that detected fewer photons than this are left out of the fit (about
#: three times a detector's electronic noise: their counts are mostly that noise, their logarithms biased low).
STARVED_COUNTS = 30.0


def hu_to_attenuation(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation relative to water: ``max(HU + 1000, 0) / 1000`` (air 0, water 1)."""
    return (np.maximum(np.asarray(hu, dtype=np.float32) + 1000.0, 0.0) / 1000.0).astype(np.float32)


def attenuation_to_hu(mu: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hu_to_attenuation` (for values >= -1000 HU)."""
    return (np.asarray(mu, dtype=np.float32) * 1000.0 - 1000.0).astype(np.float32)


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


class ParallelBeamRadon(ForwardModel):
    """2D parallel-beam CT: sinogram ``(B, 1, views, detectors)`` of an image ``(B, 1, H, W)``; ``baseline`` is FBP.

    A precomputed sparse system matrix (pixel-driven: each pixel centre projects onto the detector and its value
    is split linearly between the two nearest bins), so ``adjoint`` is its exact transpose; runs on CPU and GPU.

    Args:
        angles_deg: projection angles in degrees, e.g. ``np.linspace(0, 180, 60, endpoint=False)`` (sparse view)
            or ``np.linspace(0, 120, 80, endpoint=False)`` (limited angle).
        image_size: ``N`` or ``(H, W)`` in pixels (pixel size 1, image centred on the rotation axis).
        detectors: number of detector bins (spacing 1 pixel); default ``ceil(sqrt(H^2 + W^2)) + 1``, so every
            pixel is seen from every angle.
        subpixels: each pixel is projected as ``subpixels x subpixels`` equal sub-pixels (default 1: its centre
            only). The centre-only (pixel-driven) projector aliases into a fine moire that FBP turns into streaks:
            use 2 (:data:`SUBPIXELS`) to simulate scans and to reconstruct data this same operator did not make.
        precondition: :meth:`data_loss` weights the residual's frequencies along the detector by
            ``|f| + PRECONDITION_EPSILON`` (default ``True``), as the ramp filter of FBP does, so that gradient
            descent reaches fine detail in far fewer steps (``A^T A`` damps it as ``1 / |f|``). Same minimisers for
            consistent data.
        ray_weights: the statistical weight of each measured line integral, ``(views, detectors)`` for every slice
            or ``(D, views, detectors)`` one per slice (:meth:`slices` selects them), non-negative: the inverse of its
            variance up to a factor, e.g. the detected counts (the variance of ``-log(counts / I0)`` is about
            ``1 / counts``). :meth:`data_loss` weighs each ray's residual by it (normalised
            to a mean of 1 per slice) before the frequency weighting. Default: every ray alike.
    """

    kind = "ct"
    baseline_name = "filtered back-projection"

    #: Weight of the zero frequency relative to the Nyquist frequency's 0.5 in :meth:`data_loss`.
    PRECONDITION_EPSILON = 0.003

    def __init__(self, angles_deg, image_size: int | tuple[int, int], detectors: int | None = None,
                 precondition: bool = True, subpixels: int = 1, ray_weights=None) -> None:
        super().__init__()
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
            shape = (self.views * self.detectors, self.height * self.width)
            self.register_buffer("matrix", _csr(rows, cols, values, shape))
            self.register_buffer("transpose", _csr(cols, rows, values, shape[::-1]))
        self.register_buffer("ray_weights", None if ray_weights is None else self._checked_weights(ray_weights))
        self.register_buffer("counts", None)  # with_counts: (D or 1, 1, views, detectors)
        self.photons: float | None = None  # with_counts: incident photons per ray (None: each slice's largest count)

    def _checked_weights(self, weights) -> torch.Tensor:
        """``sqrt`` of ray weights ``(D or 1, 1, views, detectors)``, each slice's normalised to a mean of 1."""
        w = as_float_tensor(weights, "ray weights")
        if w.ndim == 2:
            w = w[None]
        if w.ndim != 3 or tuple(w.shape[1:]) != (self.views, self.detectors):
            raise InputError(f"ray weights must be (views={self.views}, detectors={self.detectors}) or (D, views, "
                             f"detectors), got shape {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise InputError("ray weights must be non-negative")
        mean = w.flatten(1).mean(dim=1)
        if not bool((mean > 0).all()):
            raise InputError("ray weights are all zero for a slice")
        return (w / mean.view(-1, 1, 1)).sqrt()[:, None]

    def with_counts(self, counts, photons: float | None = None) -> ParallelBeamRadon:
        """The same geometry with each ray weighted by the photons it detected, ``counts`` ``(views, detectors)``
        or ``(D, views, detectors)`` (one per slice): ``min(counts, FULL_WEIGHT_COUNTS)``, and 0 for rays that
        detected fewer than :data:`STARVED_COUNTS`. Rays that detected at least :data:`FULL_WEIGHT_COUNTS` photons
        count alike, as in the unweighted fit; rays short of photons (the thickest paths: shoulders, arms beside the
        body, at low dose) count in proportion to their counts, so that their noisy logarithms do not streak the
        image; rays starved of photons, whose counts are mostly the detector's electronic noise and whose logarithms
        read the object too thin, are left out, so that they do not darken it. Full inverse-variance weighting
        (every ray by its counts) measured worse with the decoders (``docs/reconstruction.md``).

        The counts also give the measurements' noise (:meth:`noise_floor`); ``photons``: the photons incident on each
        ray (default: each slice's largest count, a ray through air)."""
        c = as_float_tensor(counts, "counts")
        if bool((c < 0).any()):
            raise InputError("counts must be non-negative")
        if photons is not None and not (math.isfinite(photons) and photons > 0):
            raise InputError(f"photons must be a positive count per ray, got {photons}")
        kept = c >= STARVED_COUNTS
        if not bool(kept.flatten(-2).any(dim=-1).all()):
            raise InputError(f"every ray of a slice detected fewer than {STARVED_COUNTS:g} photons: nothing to "
                             "reconstruct from (counts, not line integrals?)")
        weighted = self.with_ray_weights(torch.where(kept, c.clamp(max=FULL_WEIGHT_COUNTS), 0.0))
        weighted = weighted._with_buffer("counts", (c if c.ndim == 3 else c[None])[:, None].to(self.device))
        weighted.photons = photons
        return weighted

    def noise_floor(self, y: torch.Tensor) -> torch.Tensor | None:
        """``(B,)`` float64: the data misfit that the noise of sinograms ``y`` alone leaves a perfect fit, where the
        counts are known (:meth:`with_counts`; else ``None``). Each ray's variance is that of a Poisson count's
        logarithm, ``1 / counts``, in ``y``'s units: the logarithms' scale to ``y`` is the median of
        ``log(photons / counts) / y`` over the rays through the object (fewer than half the photons detected). The
        detector's electronic noise is left out, so the floor errs low and the check stays strict."""
        counts = self.counts
        if counts is None:
            return None
        with torch.no_grad():
            empty = self.data_loss(torch.zeros_like(y), y.to(counts.device)).double()  # (B,) the misfit of nothing
            y = y.to(counts.device).double()
            c = counts.double().clamp(min=1.0).expand(y.shape[0], *counts.shape[1:])
            incident = torch.full((y.shape[0], 1, 1, 1), float(self.photons), dtype=torch.float64, device=c.device) \
                if self.photons else c.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
            through = (c < 0.5 * incident) & (y > 0)  # the rays through the object
            ratio = torch.where(through, (incident / c).log() / y, math.nan)
            scale = ratio.flatten(1).nanmedian(dim=1).values.view(-1, 1, 1, 1)  # NaN where no ray crosses
            weights = 1.0 if self.ray_weights is None else self.ray_weights.double() ** 2  # one slice's, or each's
            spread = (weights / (c * scale**2)).sum(dim=-1).flatten(1).mean(dim=1)  # E |rfft of a view's noise|^2
            if self.precondition:
                freq = torch.fft.rfftfreq(2 * self.detectors, dtype=torch.float64) + self.PRECONDITION_EPSILON
                expected = 4 * freq.mean() * spread
            else:
                expected = spread / self.detectors
            return torch.where(empty > 0, (expected / empty).sqrt(), math.nan)

    def with_ray_weights(self, ray_weights) -> ParallelBeamRadon:
        """The same geometry, sharing its system matrix, with ``ray_weights`` (see the class; ``None``: none)."""
        return self._with_buffer("ray_weights", None if ray_weights is None else
                                 self._checked_weights(ray_weights).to(self.device))

    def slices(self, start: int, stop: int) -> ParallelBeamRadon:
        """The model of slices ``start:stop`` (their ray weights and counts; the same object when every slice shares
        them)."""
        part = self
        for name in ("ray_weights", "counts"):
            value = getattr(part, name)
            if value is not None and value.shape[0] > 1:
                part = part._with_buffer(name, value[start:stop])
        return part

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

    def _coerce(self, t: torch.Tensor) -> torch.Tensor:
        """Sinograms ``(D, views, detectors)`` or ``(views, detectors)`` gain their channel axis."""
        t = super()._coerce(t)
        return t[:, None] if t.ndim == 3 else t[None, None] if t.ndim == 2 else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _SparseLinear.apply(self.matrix, self.transpose, x.reshape(x.shape[0], -1).float())
        return flat.view(x.shape[0], 1, self.views, self.detectors)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        flat = _SparseLinear.apply(self.transpose, self.matrix, y.reshape(y.shape[0], -1).float())
        return flat.view(y.shape[0], 1, self.height, self.width)

    def data_loss(self, predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """``(B,)`` data misfit of predicted sinograms ``(B, 1, views, detectors)``, the term a decoder is fitted with.

        Each ray's residual is first multiplied by the square root of its weight (``ray_weights``; with one set per
        slice, ``B`` is a multiple of the slices and each slice's rows are consecutive). With ``precondition`` the
        squared residual is then weighted per detector frequency by ``|f| + epsilon`` (``f`` in cycles per bin,
        zero-padded to twice the detectors; scaled so that a flat unit weight would give about the mean squared
        residual); otherwise the mean squared residual.
        """
        residual = (predicted - measured).float()
        if self.ray_weights is not None:
            w = self.ray_weights
            if w.shape[0] > 1:
                if residual.shape[0] % w.shape[0]:
                    raise InputError(f"{residual.shape[0]} sinograms for ray weights of {w.shape[0]} slices")
                w = w.repeat_interleave(residual.shape[0] // w.shape[0], dim=0)
            residual = residual * w
        if not self.precondition:
            return mean_squared_residual(residual, torch.zeros_like(residual))
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
