"""The uncertainty map's engine: members kept through the stopping rules, the spread, its calibration, the API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dd_medical
from dd_medical.core.config import FitConfig
from dd_medical.core.fit import fit
from dd_medical.core.operators import Identity
from dd_medical.core.uncertainty import (
    CALIBRATION_FILE,
    Calibration,
    fit_calibration,
    load_calibration,
    smooth_variance,
)
from dd_medical.errors import InputError
from dd_medical.phantom import ct_phantom
from dd_medical.pipeline import denoise_volume

TINY = dict(channels=8, blocks=3, iterations=40, progress=False)


def _noisy(sigmas: tuple[float, ...], size: int = 32) -> np.ndarray:
    clean = ct_phantom(len(sigmas), size)
    rng = np.random.default_rng(0)
    return np.stack([c + rng.normal(0, s, c.shape) for c, s in zip(clean, sigmas, strict=True)]).astype(np.float32)


def test_calibration_maps_through_its_knots_and_in_proportion_beyond() -> None:
    cal = Calibration(0.0, (0.0, 1.0, 2.0), (0.5, 1.5, 2.0))
    noise = torch.tensor([2.0])
    spread = torch.tensor([[[0.0, 1.0, 2.0, 4.0, 8.0]]])  # relative 0, 0.5, 1, 2, 4
    sd = cal(spread, noise)[0, 0].numpy()
    np.testing.assert_allclose(sd, [1.0, 2.0, 3.0, 4.0, 8.0], rtol=1e-6)  # 0.5 * 2, 1.0 * 2, 1.5 * 2, 2 * 2, 4 * 1 * 2


def test_the_residual_term_adds_what_exceeds_the_noise() -> None:
    cal = Calibration(0.0, (0.0, 1.0), (0.0, 1.0), residual=0.5)
    spread, noise = torch.full((1, 1, 3), 1.0), torch.tensor([1.0])
    residual = torch.tensor([[[0.5, 1.0, 3.0]]])  # below, at and above the noise
    sd = cal(spread, noise, residual)[0, 0].numpy()
    np.testing.assert_allclose(sd, [1.0, 1.0, np.sqrt(1 + 0.5 * 8)], rtol=1e-6)
    with pytest.raises(ValueError, match="residual"):
        cal(spread, noise)


def test_the_edge_term_adds_the_root_of_the_gradient_over_the_noise() -> None:
    cal = Calibration(0.0, (0.0, 1.0), (0.0, 1.0), edge=0.5)
    spread, noise = torch.full((1, 3, 5), 1.0), torch.tensor([2.0])
    ramp = torch.arange(5, dtype=torch.float64).mul(8.0).expand(1, 3, 5)  # 8 per pixel along the rows
    flat = torch.zeros_like(ramp)
    np.testing.assert_allclose(cal(spread, noise, result=flat).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cal(spread, noise, result=ramp).numpy() / 2, np.sqrt(0.25 + 0.5 * 2.0), rtol=1e-6)
    step = torch.zeros((1, 5, 5), dtype=torch.float64)
    step[..., 3:] = 100.0
    sd = cal(torch.zeros(1, 5, 5), torch.tensor([1.0]), result=step)[0].numpy()
    assert sd[:, 2:4].min() > 0 and sd[:, 0].max() == 0  # at the edge, not away from it
    with pytest.raises(ValueError, match="result"):
        cal(spread, noise)


def test_calibration_rejects_decreasing_knots() -> None:
    with pytest.raises(ValueError):
        Calibration(0.0, (0.0, 1.0), (1.0, 0.5))
    with pytest.raises(ValueError):
        Calibration(0.0, (1.0, 1.0), (1.0, 2.0))


def test_smoothing_keeps_a_constant_and_spreads_a_spike() -> None:
    flat = torch.full((1, 9, 9), 4.0, dtype=torch.float64)
    torch.testing.assert_close(smooth_variance(flat, 1.0), flat)
    spike = torch.zeros((1, 9, 9), dtype=torch.float64)
    spike[0, 4, 4] = 1.0
    out = smooth_variance(spike, 1.0)
    assert out[0, 4, 4] < 0.2 and out[0, 4, 5] > 0.05
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-6)


def test_fit_calibration_recovers_a_known_relation() -> None:
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.1, 2.0, 200_000)
    error = np.abs(rng.normal(0, 1, spread.size)) * 3 * spread  # sd = 3 x spread
    cal = fit_calibration(spread, error, smooth=0.0, fitted_on="synthetic")
    assert np.all(np.diff(cal.sd) >= 0)
    inner = (np.asarray(cal.spread) > 0.3) & (np.asarray(cal.spread) < 1.8)
    np.testing.assert_allclose(np.asarray(cal.sd)[inner], 3 * np.asarray(cal.spread)[inner], rtol=0.08)


def test_the_shipped_calibration_loads_and_says_how_to_refit() -> None:
    cal = load_calibration()
    assert CALIBRATION_FILE.name == "uncertainty_calibration.json"
    assert cal.command.startswith("python benchmarks/calibrate_uncertainty.py") and cal.fitted_on
    assert cal.sd[-1] > 0


def test_discrepancy_stop_keeps_the_members_of_the_stopping_step() -> None:
    noisy = _noisy((60.0, 20.0))
    y = torch.from_numpy((noisy + 1000) / 3000).clamp(0, 1)[:, None]
    config = FitConfig(channels=8, blocks=3, iterations=200, ensemble=3, stopping="discrepancy")
    result = fit(Identity(), y, config, keep_members=True)
    assert result.members.shape == (2, 3, 1, 32, 32)
    torch.testing.assert_close(result.members.mean(dim=1), result.image)
    assert (result.members.std(dim=1) > 0).all()


@pytest.mark.parametrize("slab", [1, 3])
def test_denoise_uncertainty_leaves_the_image_alone(slab: int) -> None:
    noisy = _noisy((15.0, 90.0, 15.0))
    config = FitConfig(channels=8, blocks=3, iterations=40, slab=slab)
    plain = denoise_volume(noisy, config, "cpu", progress=False)
    image, sd = denoise_volume(noisy, config, "cpu", progress=False, uncertainty=True)
    np.testing.assert_array_equal(image, plain)
    assert sd.shape == noisy.shape and sd.dtype == np.float32
    assert np.isfinite(sd).all() and (sd >= 0).all() and sd.max() > 0


def test_the_map_is_the_members_spread_through_the_calibration() -> None:
    from dd_medical.core.intensity import default_window

    noisy = _noisy((30.0, 60.0))
    config = FitConfig(channels=8, blocks=3, iterations=40)
    window = default_window(noisy, "CT")
    unit = torch.from_numpy(window.to_unit(noisy))[:, None]
    members = fit(Identity(), unit, config, keep_members=True).members[:, :, 0]  # (D, M, H, W)
    spread = members.std(dim=1).numpy() * window.width  # HU
    identity = Calibration(0.0, (0.0, 1.0), (0.0, 1.0))
    _, raw = denoise_volume(noisy, config, "cpu", progress=False, uncertainty=True, calibration=identity)
    np.testing.assert_allclose(raw, spread, rtol=1e-4, atol=1e-3)
    doubled = Calibration(0.0, (0.0, 1.0), (0.0, 2.0))
    _, twice = denoise_volume(noisy, config, "cpu", progress=False, uncertainty=True, calibration=doubled)
    np.testing.assert_allclose(twice, 2 * spread, rtol=1e-4, atol=2e-3)


def test_api_returns_volumes_of_the_same_geometry() -> None:
    from dd_medical.volume import Volume

    volume = Volume(_noisy((40.0, 40.0)), spacing=(0.7, 0.7, 2.5), origin=(1.0, 2.0, 3.0), modality="CT")
    image, sd = dd_medical.denoise(volume, **TINY, uncertainty=True, device="cpu")
    assert isinstance(sd, Volume) and sd.spacing == volume.spacing and sd.origin == volume.origin
    assert sd.array.shape == volume.array.shape
    array_image, array_sd = dd_medical.denoise(volume.array[0], **TINY, uncertainty=True, device="cpu")
    assert array_image.shape == array_sd.shape == (32, 32)


def test_one_decoder_has_no_spread() -> None:
    with pytest.raises(InputError, match="ensemble"):
        dd_medical.denoise(_noisy((40.0,)), **TINY, ensemble=1, uncertainty=True, device="cpu")


def test_reconstruction_returns_the_members_spread_and_the_same_image() -> None:
    from dd_medical.core.operators.inpaint import PixelMask

    clean = (ct_phantom(1, 32)[0] + 1000) / 2000
    mask = np.random.default_rng(0).random((32, 32)) < 0.6
    y = torch.from_numpy((clean * mask)[None, None].astype(np.float32))
    operator = PixelMask(mask)
    settings = dict(channels=8, blocks=3, iterations=40, ensemble=2, progress=False, device="cpu")
    image, spread = dd_medical.reconstruct(y, operator, uncertainty=True, **settings)
    plain = dd_medical.reconstruct(y, operator, **settings)
    np.testing.assert_allclose(image, plain, atol=1e-6)
    assert spread.shape == image.shape and (spread >= 0).all() and spread.max() > 0
    with pytest.raises(InputError, match="at least 2 decoders"):
        dd_medical.reconstruct(y, operator, uncertainty=True, **dict(settings, ensemble=1))
