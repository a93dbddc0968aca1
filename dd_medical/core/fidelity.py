"""Does a result still hold what its input held? The residual (input minus output) of a faithful denoiser is noise:
about as large as the input's own noise, and unrelated to the image's edges. A slice whose residual is much larger,
or concentrated on edges, lost anatomy, and is flagged."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .noise import estimate_sigma, signal_mask

#: A slice fails when the standard deviation of its residual exceeds this multiple of the input's estimated noise ...
MAX_RESIDUAL_RATIO = 1.5
#: ... or when the residual's RMS on the strongest edges exceeds this multiple of its RMS on flat tissue.
MAX_EDGE_RATIO = 1.3
EDGE_FRACTION = 0.1  # the pixels of strongest gradient (of the input, smoothed) are the edges ...
FLAT_FRACTION = 0.5  # ... and the pixels of weakest gradient are flat


@dataclass(frozen=True)
class SliceCheck:
    """The fidelity figures of one slice (residual and noise in the image's units: HU for CT)."""

    index: int
    noise: float
    residual: float
    residual_ratio: float
    edge_ratio: float

    @property
    def passed(self) -> bool:
        return self.residual_ratio <= MAX_RESIDUAL_RATIO and self.edge_ratio <= MAX_EDGE_RATIO


@dataclass(frozen=True)
class FidelityReport:
    """Per-slice checks of a result against its input (:func:`check_fidelity`)."""

    slices: tuple[SliceCheck, ...]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.slices)

    @property
    def noise(self) -> float:
        """The input's noise: the median of the slices' estimates (as :func:`dd_medical.api.estimate_noise`)."""
        return float(torch.tensor([s.noise for s in self.slices]).median())

    @property
    def failed(self) -> list[SliceCheck]:
        return [s for s in self.slices if not s.passed]

    def summary(self) -> str:
        """One line: passed, or which slices failed and their worst figures."""
        worst = max(self.slices, key=lambda s: s.residual_ratio)
        worst_edge = max(s.edge_ratio for s in self.slices)
        residual = (f"residual up to {worst.residual_ratio:.2f}x the noise" if math.isfinite(worst.residual_ratio)
                    else f"residual of {worst.residual:.3g} where the input has no measurable noise")
        edges = f"{worst_edge:.2f}x" if math.isfinite(worst_edge) else "far more than"
        figures = f"{residual}, edges up to {edges} flat tissue"
        if self.passed:
            return f"fidelity check passed ({figures})"
        failed = self.failed
        listed = ", ".join(str(s.index) for s in failed[:8]) + (", ..." if len(failed) > 8 else "")
        return (f"fidelity check FAILED on {len(failed)} of {len(self.slices)} slice(s) ({listed}): {figures} "
                f"(limits {MAX_RESIDUAL_RATIO}x and {MAX_EDGE_RATIO}x): anatomy may have been removed")

    def as_record(self) -> dict:
        """Plain numbers, for metadata (MONAI) and manifests."""
        return {"passed": self.passed, "failed_slices": [s.index for s in self.failed],
                "residual_ratio": [round(s.residual_ratio, 3) for s in self.slices],
                "edge_ratio": [round(s.edge_ratio, 3) for s in self.slices],
                "noise": [round(s.noise, 3) for s in self.slices],
                "limits": {"residual_ratio": MAX_RESIDUAL_RATIO, "edge_ratio": MAX_EDGE_RATIO}}


def edge_strength(image: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude (Sobel) of ``image`` ``(H, W)`` smoothed by a 5-tap Gaussian (sigma 1 pixel)."""
    taps = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / 2)
    taps = taps / taps.sum()
    x = F.pad(image[None, None].double(), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(F.conv2d(x, taps.double().view(1, 1, 1, 5)), taps.double().view(1, 1, 5, 1))
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(x, sobel.view(1, 1, 3, 3)), F.conv2d(x, sobel.t().reshape(1, 1, 3, 3))
    return torch.hypot(gx, gy)[0, 0]


def slice_check(before: torch.Tensor, after: torch.Tensor, index: int = 0) -> SliceCheck:
    """The fidelity figures of one slice ``(H, W)`` (see :func:`check_fidelity`)."""
    before, after = before.float(), after.float()
    mask = signal_mask(before)
    if int(mask.sum()) < 16:
        mask = torch.ones_like(mask)
    noise = float(estimate_sigma(before, mask))
    residual = (before - after).double()
    spread = float(residual[mask].std()) if int(mask.sum()) > 1 else 0.0
    grad = edge_strength(before)[mask]
    r = residual[mask]
    edges = grad >= torch.quantile(grad, 1 - EDGE_FRACTION)
    flat = grad <= torch.quantile(grad, FLAT_FRACTION)
    rms = [float(r[sel].pow(2).mean().sqrt()) if bool(sel.any()) else 0.0 for sel in (edges, flat)]
    edge_ratio = rms[0] / rms[1] if rms[1] > 0 else (0.0 if rms[0] == 0 else float("inf"))
    ratio = spread / noise if noise > 0 else (0.0 if spread == 0 else float("inf"))
    return SliceCheck(index, noise, spread, ratio, edge_ratio)


def check_fidelity(before: np.ndarray, after: np.ndarray) -> FidelityReport:
    """Check each slice of a result ``after`` against its input ``before`` (both ``(D, H, W)`` or ``(H, W)``, the same
    units): the residual ``before - after``, over the pixels that carry noise
    (:func:`~dd_medical.core.noise.signal_mask`), should have about the input's noise level
    (:func:`~dd_medical.core.noise.estimate_sigma`; at most :data:`MAX_RESIDUAL_RATIO` times) and no more energy on
    the input's strongest edges than on its flat tissue (at most :data:`MAX_EDGE_RATIO` times)."""
    b = torch.as_tensor(np.asarray(before, dtype=np.float32))
    a = torch.as_tensor(np.asarray(after, dtype=np.float32))
    if b.shape != a.shape:
        raise ValueError(f"before {tuple(b.shape)} and after {tuple(a.shape)} differ in shape")
    if b.ndim == 2:
        b, a = b[None], a[None]
    return FidelityReport(tuple(slice_check(b[i], a[i], i) for i in range(b.shape[0])))
