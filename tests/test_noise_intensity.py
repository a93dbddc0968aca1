import numpy as np
import pytest
import torch

from dd_medical.core.intensity import Window, default_window
from dd_medical.core.noise import estimate_sigma


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_noise_estimate_within_10_percent_on_synthetic_noise(sigma):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    smooth = 0.5 + 0.3 * np.sin(4 * xx) * np.cos(3 * yy)  # structure that the HH band barely sees
    noisy = smooth + rng.normal(0, sigma, smooth.shape)
    est = float(estimate_sigma(noisy))
    assert abs(est - sigma) / sigma < 0.10


def test_noise_estimate_is_per_image_in_a_batch():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(np.stack([rng.normal(0, s, (1, 64, 64)) for s in (0.01, 0.1)]).astype(np.float32))
    est = estimate_sigma(batch)
    assert est.shape == (2,)
    assert abs(float(est[0]) - 0.01) < 0.0015 and abs(float(est[1]) - 0.1) < 0.015


def test_ct_window_covers_full_range_and_inverts_exactly():
    hu = np.array([[-1024.0, -100.5, 0.0, 40.0, 3071.0]], dtype=np.float32)
    window = default_window(hu, "CT")
    assert (window.low, window.high) == (-1024.0, 3071.0)
    unit = window.to_unit(hu)
    assert unit.min() == 0.0 and unit.max() == 1.0
    np.testing.assert_allclose(window.from_unit(unit), hu, atol=1e-3)


def test_mr_window_uses_robust_percentiles_when_outliers_dominate():
    rng = np.random.default_rng(0)
    values = rng.uniform(100, 500, size=10_000)
    values[:5] = 40_000  # a few very bright voxels
    window = default_window(values, "MR")
    assert window.high < 1_000 and window.low >= 100
    plain = rng.uniform(100, 500, size=10_000)
    assert default_window(plain, "MR") == Window(float(plain.min()), float(plain.max()))


def test_window_rejects_empty_range_and_nonfinite():
    with pytest.raises(ValueError):
        Window(1.0, 1.0)
    with pytest.raises(ValueError):
        Window(float("nan"), 1.0)
    assert default_window(np.full((4, 4), 7.0)).width == 1.0
