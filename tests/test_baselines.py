"""The benchmarks' classical baselines (benchmarks/baselines.py): TV-PDHG and the power iteration it needs."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from baselines import operator_norm, tv_reconstruct  # noqa: E402
from test_reconstruct import _psnr, phantom_hu  # noqa: E402  (the same test images)

from dd_medical.core.operators import GaussianProjection, PixelMask  # noqa: E402
from dd_medical.simulation import simulate  # noqa: E402


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
