"""The benchmarks' classical baselines (benchmarks/baselines.py): TV-PDHG and the power iteration it needs."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from baselines import operator_norm, tv_reconstruct  # noqa: E402

from dd_medical.core.operators import GaussianProjection, PixelMask  # noqa: E402
from dd_medical.metrics import psnr  # noqa: E402
from dd_medical.simulation import simulate  # noqa: E402


def phantom_hu(depth: int = 2, size: int = 48) -> np.ndarray:
    """Piecewise-constant HU slices: a body ellipse (40 HU) with a lesion (+160 HU) in air."""
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    body = (xx / (0.45 * size)) ** 2 + (yy / (0.35 * size)) ** 2 < 1
    lesion = (xx - 5) ** 2 + (yy + 3) ** 2 < 16
    hu = np.where(body, 40.0, -1000.0) + np.where(lesion, 160.0, 0.0)
    return np.repeat(hu[None], depth, axis=0).astype(np.float32)


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(psnr(image, reference, float(reference.max() - reference.min()))))


def test_tv_baseline_improves_on_fbp():
    sim = simulate(phantom_hu(1, 32), "ct", views=16)
    scale = float(sim.operator.fbp(sim.measurements).max())
    tv = tv_reconstruct(sim.operator, sim.measurements / scale, 0.003, iterations=100, nonnegative=True) * scale
    fbp = sim.operator.fbp(sim.measurements)
    assert _psnr(tv[:, 0].numpy(), sim.reference) > _psnr(fbp[:, 0].numpy(), sim.reference) + 3


def test_operator_norm_is_the_largest_singular_value():
    op = GaussianProjection(40, (8, 8), seed=1)
    y = torch.zeros(2, 40)
    expected = float(torch.linalg.matrix_norm(op.matrix.double(), ord=2))
    assert operator_norm(op, y, iterations=200) == pytest.approx(expected, rel=1e-3)
    mask = torch.zeros(16, 16)
    mask[::2] = 1.0
    assert operator_norm(PixelMask(mask), torch.zeros(1, 1, 16, 16)) == pytest.approx(1.0, abs=1e-6)
