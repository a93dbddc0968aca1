"""First, do no harm: structure that a fit left in its residual goes back into the result.

A decoder that cannot hold all of a slice's anatomy before it reaches the noise level (weak noise, a large or busy
slice) leaves edges, bone and small organs in its residual ``input - output``. Noise in the residual is what a
denoiser should remove; structure is not. :func:`return_detail` separates them with the multiresolution support of
Starck & Murtagh (the coefficients of an isotropic undecimated wavelet transform, the *starlet*, that are
significant against the noise of their scale; Starck, Fadili & Murtagh, IEEE TIP 2007) and adds the significant part
of the residual back to the result. Where the fit explained the slice down to its noise, nothing is significant and
the result is unchanged; where it erased anatomy, the anatomy comes back, with the noise it carried there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fidelity import EDGE_FRACTION, FLAT_FRACTION, edge_strength, slice_check
from .noise import MAD_TO_SIGMA, constant_pixels, estimate_sigma, signal_mask

#: Scales of the starlet transform (details at 1, 2, 4 and 8 pixels, and the coarse rest).
LEVELS = 4
#: The finest scale, which holds most of the noise's coefficients, is thresholded this much higher (Starck & Murtagh:
#: ``k = 4`` there, 3 elsewhere), so that few isolated noise pixels come back.
FINEST_EXTRA = 1.0
#: On the input's strongest edges (the fidelity check's :data:`~dd_medical.core.fidelity.EDGE_FRACTION` of pixels),
#: where anatomy is known to be, the threshold is this fraction of the rest's: a coefficient there is more likely
#: structure than noise.
EDGE_FACTOR = 2 / 3
#: The B3-spline filter of the starlet transform.
B3_SPLINE = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _smooth(image: torch.Tensor, level: int) -> torch.Tensor:
    """``image`` ``(H, W)`` convolved with the B3 spline dilated by ``2**level`` (a trous), mirrored at the borders
    (repeated where the slice is too small to mirror)."""
    step = 2**level
    taps = torch.zeros(4 * step + 1, dtype=image.dtype)
    taps[::step] = torch.tensor(B3_SPLINE, dtype=image.dtype)
    pad = 2 * step
    mode = "reflect" if pad < min(image.shape) else "replicate"
    x = F.pad(image[None, None], (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(F.conv2d(x, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    return x[0, 0]


def starlet(image: torch.Tensor, levels: int = LEVELS) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The isotropic undecimated wavelet transform of ``image`` ``(H, W)``: ``levels`` detail images (finest first)
    and the coarse rest, each ``(H, W)``; their sum is ``image``."""
    details, coarse = [], image
    for level in range(levels):
        smoother = _smooth(coarse, level)
        details.append(coarse - smoother)
        coarse = smoother
    return details, coarse


def _level(coefficients: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The noise standard deviation of ``coefficients`` from their median absolute value over ``where``."""
    return coefficients[where].abs().median() / MAD_TO_SIGMA


def return_detail(before: torch.Tensor, after: torch.Tensor, threshold: float = 3.0) -> torch.Tensor:
    """``after`` ``(H, W)``, a denoised ``before`` ``(H, W)`` (same units), with the significant structure of its
    residual added back.

    The residual ``before - after`` is decomposed by :func:`starlet`. A coefficient is significant when its magnitude
    exceeds ``threshold`` times the noise level of its scale (Starck & Murtagh's multiresolution support, ``k = 3``;
    ``threshold +`` :data:`FINEST_EXTRA` at the finest scale; times :data:`EDGE_FACTOR` on the input's strongest
    edges). That level is the median absolute coefficient over the
    flat pixels of ``before`` (the weaker half of its smoothed gradient,
    :func:`~dd_medical.core.fidelity.edge_strength`, among the pixels that carry noise), where anatomy is least: the
    lowest of the residual's own, the input's (detail scales), and the input's estimated noise
    (:func:`~dd_medical.core.noise.estimate_sigma`), which no scale's noise exceeds. So where the fit removed noise
    and nothing else, the residual's level holds and little comes back; where it left anatomy, or its own texture,
    everywhere, the input's levels hold and that comes back. Significant coefficients are added back whole. Pixels
    whose exact value fills more than :data:`~dd_medical.core.noise.SPIKE_FRACTION` of the slice (constant padding,
    air clipped at a bound) hold no noise and get their input value back. ``threshold=0`` returns ``after``
    unchanged. Any units (HU, [0, 1]); returns ``after``'s dtype.
    """
    if threshold <= 0:
        return after
    b, a = before.double(), after.double()
    residual = b - a
    mask = signal_mask(b)
    if int(mask.sum()) < 16:
        mask = torch.ones_like(mask)
    noise = estimate_sigma(b, mask).double()
    gradient = edge_strength(b)
    flat = mask & (gradient <= torch.quantile(gradient[mask], FLAT_FRACTION))
    edges = gradient >= torch.quantile(gradient[mask], 1 - EDGE_FRACTION)
    scale_at = torch.where(edges, EDGE_FACTOR, 1.0).double()
    details, coarse = starlet(residual)
    inputs, _ = starlet(b)
    kept = torch.zeros_like(residual)
    for scale, (band, seen) in enumerate(zip([*details, coarse], [*inputs, None], strict=True)):
        level = torch.minimum(_level(band, flat), noise)
        if seen is not None:
            level = torch.minimum(level, _level(seen, flat))
        k = threshold + FINEST_EXTRA if scale == 0 else threshold
        kept += torch.where(band.abs() > k * scale_at * level, band, torch.zeros_like(band))
    out = a + kept
    return torch.where(constant_pixels(b), b, out).to(after.dtype)


#: A slice is left as it is when its residual is at most this multiple of its noise, and its edge ratio at most
#: :data:`TARGET_EDGE_RATIO`: margins below the fidelity check's own limits (1.5 and 1.3), so that a slice that only
#: just passes the check (a small bone smoothed, say) gets its structure back too.
TARGET_RESIDUAL_RATIO = 1.3
TARGET_EDGE_RATIO = 1.2
#: The thresholds tried, as multiples of ``detail_threshold``, strictest first: a slice gets the least detail back
#: that makes it faithful. The last, below ``detail_threshold``, is for slices the decoders failed throughout (their
#: own texture at weak noise): there, more of the input, noise included, is the lesser harm.
LADDER = (2.0, 1.5, 1.0, 2 / 3)


def _faithful(before: torch.Tensor, after: torch.Tensor) -> bool:
    figures = slice_check(before, after)
    return figures.residual_ratio <= TARGET_RESIDUAL_RATIO and figures.edge_ratio <= TARGET_EDGE_RATIO


def keep_anatomy(before: torch.Tensor, after: torch.Tensor, threshold: float = 3.0) -> tuple[torch.Tensor, float]:
    """``after`` ``(H, W)`` unchanged where it is faithful to ``before`` (the fidelity check's figures,
    :func:`~dd_medical.core.fidelity.slice_check`: residual at most :data:`TARGET_RESIDUAL_RATIO` times the
    noise, edge ratio at most :data:`TARGET_EDGE_RATIO`); else with the least of its residual's structure back
    that makes it so (:func:`return_detail` at ``threshold`` times each of :data:`LADDER`, strictest first), or,
    when none does, at the last of them (two thirds of ``threshold``). Returns the result and the threshold used
    (0: unchanged). ``threshold=0``: unchanged."""
    if threshold <= 0 or _faithful(before, after):
        return after, 0.0
    for factor in LADDER:
        candidate = return_detail(before, after, threshold * factor)
        if factor == LADDER[-1] or _faithful(before, candidate):
            return candidate, threshold * factor
    raise AssertionError("unreachable")
