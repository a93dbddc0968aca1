import numpy as np
import pytest
import torch

from dd_medical.core.intensity import Window, default_window
from dd_medical.core.noise import estimate_sigma, signal_mask
from dd_medical.core.operators import ParallelBeamRadon

SIDE = 96  # slices big enough for the total estimate (smaller ones get the finest band's), small enough for seconds


def _body(size: int = SIDE) -> np.ndarray:
    """A CT-like slice in HU, noise-free: air at -1000 (a window's lower bound), a body ellipse with a slow
    gradient, a bright vertebra and a soft lesion."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1
    bone = xx**2 + (yy - 0.15) ** 2 < 0.004
    lesion = (xx + 0.15) ** 2 + (yy + 0.05) ** 2 < 0.003
    return np.where(body, 40.0 + 40.0 * xx, -1000.0) + 700.0 * bone + 30.0 * lesion


def _truth(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The standard deviation of the noise over the pixels that carry it."""
    return float((noisy - clean)[signal_mask(noisy).numpy()].std())


@pytest.fixture(scope="module")
def fbp_noise() -> np.ndarray:
    """Filtered back-projection noise (white noise on a sinogram of 1.5 x SIDE views over 180 degrees, 2x2
    sub-pixel projector, ramp FBP), scaled to 25 HU: correlated between neighbouring pixels, with less power in
    the finest band than its variance."""
    op = ParallelBeamRadon(np.linspace(0, 180, SIDE * 3 // 2, endpoint=False), SIDE, subpixels=2)
    sinogram = op.forward(torch.zeros(1, 1, SIDE, SIDE))
    noise = op.fbp(torch.randn(sinogram.shape, generator=torch.Generator().manual_seed(0)))[0, 0].numpy()
    return noise / noise.std() * 25.0


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
@pytest.mark.parametrize("method", ["total", "finest"])
def test_noise_estimate_within_10_percent_on_synthetic_noise(sigma, method):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    smooth = 0.5 + 0.3 * np.sin(4 * xx) * np.cos(3 * yy)  # structure that the HH band barely sees
    noisy = smooth + rng.normal(0, sigma, smooth.shape)
    est = float(estimate_sigma(noisy, method=method))
    assert abs(est - sigma) / sigma < 0.10


def test_noise_estimate_is_per_image_in_a_batch():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(np.stack([rng.normal(0, s, (1, 64, 64)) for s in (0.01, 0.1)]).astype(np.float32))
    est = estimate_sigma(batch)
    assert est.shape == (2,) and est.dtype == torch.float32
    assert abs(float(est[0]) - 0.01) < 0.0015 and abs(float(est[1]) - 0.1) < 0.015


def test_total_noise_estimate_on_white_clipped_and_padded_slices():
    """White noise within 10% of the truth, and so when a window's bound clips half of the air's noise or the
    scanner pads outside its scan circle (those pixels hold no noise and are left out)."""
    clean = _body()
    noisy = clean + np.random.default_rng(0).normal(0, 25.0, clean.shape)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    outside = (yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 > (0.48 * SIDE) ** 2
    cases = {"white": noisy, "clipped": np.maximum(noisy, -1000.0), "padded": np.where(outside, -2048.0, noisy)}
    for name, image in cases.items():
        truth = _truth(image, np.where(outside, -2048.0, clean) if name == "padded" else clean)
        est = float(estimate_sigma(image))
        assert abs(est / truth - 1) < 0.10, (name, est, truth)


def test_total_noise_estimate_measures_correlated_fbp_noise_whole(fbp_noise):
    """FBP noise: the total estimate within 15% of the truth; the finest band alone (Donoho's estimator) reads
    less than 85% of it, which made the discrepancy rule run every slice to the iteration cap."""
    clean = _body()
    noisy = clean + fbp_noise
    truth = _truth(noisy, clean)
    total, finest = float(estimate_sigma(noisy)), float(estimate_sigma(noisy, method="finest"))
    assert abs(total / truth - 1) < 0.15, (total, truth)
    assert finest < 0.85 * truth


def test_anatomy_is_not_read_as_noise():
    """Edges, a gradient and a textured organ with weak noise: the estimate stays near the noise, not the anatomy;
    a noise-free smooth image (range 0.2 to 0.8) reads almost nothing."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE - 0.5
    texture = 30.0 * np.sin(40 * xx) * np.sin(33 * yy) * ((xx + 0.1) ** 2 + yy**2 < 0.02)  # a 60 HU-deep texture
    clean = _body() + texture
    noisy = clean + rng.normal(0, 5.0, clean.shape)
    assert float(estimate_sigma(noisy)) < 1.25 * _truth(noisy, clean)
    smooth = 0.5 + 0.3 * np.sin(8 * xx) * np.cos(6 * yy)
    assert float(estimate_sigma(smooth)) < 0.005


def test_small_slices_get_the_finest_band_estimate_and_methods_are_checked():
    noisy = np.random.default_rng(4).normal(0, 1.0, (2, 1, 32, 32))
    assert torch.equal(estimate_sigma(noisy), estimate_sigma(noisy, method="finest"))
    with pytest.raises(ValueError, match="method"):
        estimate_sigma(noisy, method="mad")
    with pytest.raises(ValueError, match="2x2"):
        estimate_sigma(np.zeros((1, 5)))


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
