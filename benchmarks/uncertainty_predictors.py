"""Which ensemble quantity predicts the denoising error best? The comparisons behind the uncertainty map's design.

One fit of ``--members`` decoders per slice (fixed ``--iterations``, the calibration images of
``calibrate_uncertainty.py`` with white noise of ``--sigma`` HU) gives, on the same estimates, the Spearman rank
correlation (inside the body, per voxel) between the actual absolute error and:

- the spread (sample variance) of the first two members, the package's map;
- the spread of all members (more members on request);
- the late-iterate variance (each member's moving variance of its iterates, as the moving average of the iterates
  the package returns), alone and added to the two members' spread;
- the two members' spread plus ``weight`` times the local residual energy above the noise (``(noisy - result)^2``
  smoothed, minus the noise variance), for a few weights: the map's own predictor
  (:meth:`~dd_medical.core.uncertainty.Calibration.predictor`).

Every variance is smoothed over 1 pixel, as the map is.

    python benchmarks/uncertainty_predictors.py --datasets phantom ct_body_j2k --iterations 300
    python benchmarks/uncertainty_predictors.py --quick      # a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibrate_uncertainty as calib  # noqa: E402

from dd_medical.core import estimators  # noqa: E402
from dd_medical.core import fit as fitting  # noqa: E402
from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.intensity import default_window  # noqa: E402
from dd_medical.core.noise import estimate_sigma  # noqa: E402
from dd_medical.core.operators import Identity  # noqa: E402
from dd_medical.core.uncertainty import Calibration, smooth_variance  # noqa: E402

RESIDUAL_WEIGHTS = (0.05, 0.2, 1.0)


class IterateVariance(estimators.Average):
    """The package's moving average of the iterates, and the moving average of their squares."""

    def update(self, step: int, images: torch.Tensor, objective: torch.Tensor, decoders) -> None:
        if step == 0:
            self.squares = images.pow(2).clone()
        else:
            d = min(self.decay, step / (step + self.warmup))
            self.squares.mul_(d).add_(images.pow(2), alpha=1 - d)
        super().update(step, images, objective, decoders)

    def variance(self) -> torch.Tensor:
        return (self.squares - self.value.pow(2)).clamp(min=0)


def _spearman(variance: torch.Tensor, error: np.ndarray, mask: np.ndarray) -> float:
    predicted = smooth_variance(variance.double(), 1.0).sqrt().numpy()
    return calib._spearman(predicted[mask], error[mask])


def compare(clean: np.ndarray, sigma: float, members: int, iterations: int, channels: int | None = None,
            blocks: int | None = None) -> dict[str, float]:
    """The Spearman correlation of each predictor on one stack ``clean`` (D, H, W) HU with ``sigma`` HU of noise."""
    noisy = calib._noisy(clean, sigma, 12)
    mask = calib._body(clean, -500.0)
    window = default_window(noisy, "CT")
    unit = torch.from_numpy(window.to_unit(noisy))[:, None]
    noise = estimate_sigma(unit)
    depth, height, width = noisy.shape
    base = FitConfig()
    config = FitConfig(channels=channels or base.channels, ensemble=members, stopping="fixed", iterations=iterations,
                       blocks=blocks or base.depth(height, width, float(noise.median())))
    holder: dict[str, IterateVariance] = {}

    def make(cfg: FitConfig) -> IterateVariance:
        holder["estimator"] = IterateVariance(cfg.average_decay, cfg.average_warmup)
        return holder["estimator"]

    original = fitting.make_estimator
    fitting.make_estimator = make
    try:
        result = fitting.fit(Identity(), unit, config, keep_members=True)
    finally:
        fitting.make_estimator = original
    each = result.members[:, :, 0]  # (D, M, H, W)
    iterate = holder["estimator"].variance().view(depth, members, 1, height, width)[:, :, 0]
    two = each[:, :2]
    error = lambda m: np.abs(window.from_unit(m.numpy()) - clean)  # noqa: E731
    err2 = error(two.mean(1))
    residual = unit[:, 0] - two.mean(1)
    out = {"2 members' spread (the map)": _spearman(two.var(1), err2, mask),
           f"{members} members' spread": _spearman(each.var(1), error(each.mean(1)), mask),
           "late-iterate variance": _spearman(iterate[:, :2].mean(1), err2, mask),
           "2 members' spread + late-iterate variance": _spearman(two.var(1) + iterate[:, :2].mean(1), err2, mask)}
    for w in RESIDUAL_WEIGHTS:
        probe = Calibration(1.0, (0.0, 1.0), (0.0, 1.0), residual=w)  # the map's own predictor, before its map
        predicted = probe.predictor(two.std(1), noise, residual).numpy()
        out[f"2 members' spread + {w:g} x residual excess"] = calib._spearman(predicted[mask], err2[mask])
    out["RMS error of 2 members' mean (HU)"] = float(np.sqrt(np.mean(err2[mask] ** 2)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["phantom", "ct_body_j2k"],
                        help="calibration images (phantom, ct_body_j2k, ct_head_gantry_tilt)")
    parser.add_argument("--sigma", type=float, default=60.0, help="white noise added, HU")
    parser.add_argument("--members", type=int, default=4, help="decoders per slice (>= 2)")
    parser.add_argument("--iterations", type=int, default=300, help="fixed iterations per fit")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the 64 px phantom, tiny decoders")
    args = parser.parse_args(argv)
    sets = {name: clean for name, clean, _ in calib.clean_sets(args.quick)}
    for name in (["phantom"] if args.quick else args.datasets):
        t0 = time.perf_counter()
        iterations = 20 if args.quick else args.iterations
        scores = compare(sets[name], args.sigma, args.members, iterations, *((8, 3) if args.quick else ()))
        print(f"{name}, +{args.sigma:g} HU, {iterations} iterations ({time.perf_counter() - t0:.0f} s):")
        for what, value in scores.items():
            print(f"  {what:48s} {value:.3f}")


if __name__ == "__main__":
    main()
