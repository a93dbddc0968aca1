"""Per-voxel uncertainty from the ensemble: the members' spread, and its calibration to a standard deviation.

The decoders of a slice are started from different random draws. They fit the same anatomy and different parts of
the noise, so where they disagree the estimate is less certain. The *spread* is the members' per-pixel sample
standard deviation (every member of every slab that holds the slice). :class:`Calibration` maps it to the standard
deviation of the error: the member variance, plus ``residual`` times the local excess of the residual (input minus
result) over the noise variance (a bias the members share shows there), plus ``edge`` times the square root of the
result's gradient magnitude (where smoothing's bias is: at edges), each smoothed over ``smooth`` pixels and relative
to the slice's noise, is put through a monotone piecewise-linear map fitted on images with known added noise, and
scaled back. The shipped map is ``uncertainty_calibration.json`` beside this file;
``benchmarks/calibrate_uncertainty.py --write`` refits it.

What the spread cannot see: an error every member makes alike (a bias, e.g. a lesion all decoders smooth away).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: The calibration the package ships (refit with ``python benchmarks/calibrate_uncertainty.py --write``).
CALIBRATION_FILE = Path(__file__).with_name("uncertainty_calibration.json")


def smooth_variance(variance: torch.Tensor, pixels: float) -> torch.Tensor:
    """``variance`` ``(D, H, W)`` averaged under a Gaussian of ``pixels`` standard deviation (reflected at the edges;
    0: unchanged)."""
    if pixels <= 0:
        return variance
    radius = max(1, math.ceil(3 * pixels))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / pixels) ** 2)
    kernel = (kernel / kernel.sum()).to(variance.dtype)
    out = variance[:, None]
    for k in (kernel.view(1, 1, -1, 1), kernel.view(1, 1, 1, -1)):
        pad = (0, 0, radius, radius) if k.shape[2] > 1 else (radius, radius, 0, 0)
        out = F.conv2d(F.pad(out, pad, mode="reflect" if min(out.shape[-2:]) > radius else "replicate"), k)
    return out[:, 0]


def gradient(image: torch.Tensor) -> torch.Tensor:
    """The gradient magnitude ``(D, H, W)`` float64 of ``image`` ``(D, H, W)``, per pixel (central differences,
    one-sided at the border)."""
    x = image.to(torch.float64)
    rows = torch.gradient(x, dim=1)[0] if x.shape[1] > 1 else torch.zeros_like(x)
    cols = torch.gradient(x, dim=2)[0] if x.shape[2] > 1 else torch.zeros_like(x)
    return (rows**2 + cols**2).sqrt()


@dataclass(frozen=True)
class Calibration:
    """A monotone map from the ensemble spread to the standard deviation of the error, both relative to the
    slice's noise.

    Attributes:
        smooth: Gaussian smoothing (pixels) of the member variance (and of the squared residual) before the map.
        spread: knots of the smoothed spread divided by the noise standard deviation (increasing, from 0).
        sd: the error's standard deviation divided by the noise at each knot (non-decreasing). Beyond the last knot
            the map goes on in proportion (``sd[-1] / spread[-1]`` times the spread).
        fitted_on: what the map was fitted on.
        command: the command that refits it.
        residual: weight of the residual's local excess over the noise variance, added to the member variance
            (0: the spread alone).
        edge: weight of the square root of the result's gradient magnitude (per pixel, relative to the noise), added
            to the relative variance (0: none).
    """

    smooth: float
    spread: tuple[float, ...]
    sd: tuple[float, ...]
    fitted_on: str = ""
    command: str = "python benchmarks/calibrate_uncertainty.py --write"
    residual: float = 0.0
    edge: float = 0.0

    def __post_init__(self) -> None:
        if len(self.spread) != len(self.sd) or len(self.spread) < 2:
            raise ValueError("a calibration needs at least two knots, as many spreads as standard deviations")
        if np.any(np.diff(self.spread) <= 0) or np.any(np.diff(self.sd) < 0) or self.spread[0] < 0:
            raise ValueError("calibration knots must be increasing in spread and non-decreasing in sd")

    def predictor(self, spread: torch.Tensor, noise: torch.Tensor, residual: torch.Tensor | None = None,
                  result: torch.Tensor | None = None) -> torch.Tensor:
        """What the map is applied to: ``(D, H, W)`` float64, the square root of the smoothed member variance over
        the noise variance, plus ``residual`` times the residual's smoothed excess over the noise variance (relative),
        plus ``edge`` times the smoothed square root of the result's gradient magnitude over the noise."""
        noise = torch.clamp(noise.to(torch.float64), min=1e-6)[:, None, None]
        variance = smooth_variance(spread.to(torch.float64) ** 2, self.smooth) / noise**2
        if self.residual > 0:
            if residual is None:
                raise ValueError("this calibration uses the residual (input minus result); pass it")
            excess = smooth_variance(residual.to(torch.float64) ** 2, self.smooth) / noise**2 - 1
            variance = variance + self.residual * excess.clamp(min=0)
        if self.edge > 0:
            if result is None:
                raise ValueError("this calibration uses the result's edges; pass the result")
            variance = variance + self.edge * smooth_variance((gradient(result) / noise).sqrt(), self.smooth)
        return variance.clamp(min=0).sqrt()

    def __call__(self, spread: torch.Tensor, noise: torch.Tensor, residual: torch.Tensor | None = None,
                 result: torch.Tensor | None = None) -> torch.Tensor:
        """The calibrated standard deviation ``(D, H, W)`` from the spread ``(D, H, W)``, the noise standard
        deviation of each slice ``(D,)``, and (when ``self.residual > 0``) the residual, input minus result, and
        (when ``self.edge > 0``) the result, both ``(D, H, W)``, all in the same units."""
        relative = self.predictor(spread, noise, residual, result)
        noise = torch.clamp(noise.to(torch.float64), min=1e-6)[:, None, None]
        knots, values = np.asarray(self.spread), np.asarray(self.sd)
        inside = np.interp(relative.numpy(), knots, values)
        beyond = relative.numpy() * (values[-1] / knots[-1])
        mapped = np.where(relative.numpy() > knots[-1], beyond, inside)
        return (torch.from_numpy(mapped) * noise).to(torch.float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def load_calibration(path: Path | str = CALIBRATION_FILE) -> Calibration:
    """The calibration stored at ``path`` (default: the package's)."""
    data = json.loads(Path(path).read_text())
    return Calibration(float(data["smooth"]), tuple(map(float, data["spread"])), tuple(map(float, data["sd"])),
                       str(data.get("fitted_on", "")), str(data.get("command", Calibration.command)),
                       float(data.get("residual", 0.0)), float(data.get("edge", 0.0)))


def fit_calibration(spread: np.ndarray, error: np.ndarray, smooth: float, fitted_on: str, knots: int = 24,
                    residual: float = 0.0, edge: float = 0.0) -> Calibration:
    """Fit the map from pooled pixels: ``spread`` (:meth:`Calibration.predictor`'s values: smoothed, relative to the
    noise) and ``error`` (the absolute error relative to the noise), 1-D arrays of equal length. The spread's
    quantiles give the knots; at each, the error's root mean square; then the pool-adjacent-violators rule makes it
    non-decreasing. ``residual``, ``edge``: the predictor's weights, stored with the map."""
    spread, error = np.asarray(spread, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    edges = np.unique(np.quantile(spread, np.linspace(0, 1, knots + 1)))
    bins = np.clip(np.searchsorted(edges, spread, side="right") - 1, 0, len(edges) - 2)
    centres, rms, weight = [], [], []
    for b in range(len(edges) - 1):
        pick = bins == b
        if pick.sum() == 0:
            continue
        centres.append(float(np.median(spread[pick])))
        rms.append(float(np.sqrt(np.mean(error[pick] ** 2))))
        weight.append(float(pick.sum()))
    values = _monotone(np.asarray(rms), np.asarray(weight))
    xs, ys = [0.0], [float(values[0])]
    for x, y in zip(centres, values, strict=True):
        if x > xs[-1]:
            xs.append(x)
            ys.append(float(y))
    return Calibration(float(smooth), tuple(xs), tuple(ys), fitted_on, residual=float(residual), edge=float(edge))


def _monotone(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values, weights, strict=True):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks])
