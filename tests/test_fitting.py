from dataclasses import replace

import numpy as np
import pytest
import torch

from dd_medical.core.fit import FitConfig, fit, total_variation
from dd_medical.core.operators import Identity

SMALL = dict(channels=8, blocks=4, iterations=60, loss_every=5, ensemble=1)


def _images(batch: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    clean = np.stack([0.5 + 0.3 * np.sin((3 + b) * xx) * np.cos(2 * yy) for b in range(batch)])
    return torch.from_numpy(np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32))[:, None]


def test_fit_returns_image_history_iterations_and_time():
    y = _images(2)
    result = fit(Identity(), y, FitConfig(**SMALL))
    assert result.image.shape == y.shape and result.image.dtype == torch.float32
    assert 0 <= float(result.image.min()) and float(result.image.max()) <= 1
    assert result.loss_history.shape[1] == 2 and result.loss_history.shape[0] >= 60 // 5
    assert list(result.iterations) == [60, 60]
    assert result.seconds > 0
    assert result.loss_history[-1].mean() < result.loss_history[0].mean()  # it fits
    assert any(k.startswith("weights") for k in result.weights)


def test_same_seed_same_output_other_seed_other_output():
    y = _images(1)
    a = fit(Identity(), y, FitConfig(**SMALL, seed=3)).image
    b = fit(Identity(), y, FitConfig(**SMALL, seed=3)).image
    c = fit(Identity(), y, FitConfig(**SMALL, seed=4)).image
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_compile_is_a_cuda_setting_and_changes_nothing_on_a_cpu(monkeypatch):
    import dd_medical.core.decoder as decoder

    monkeypatch.setattr(decoder, "compiled_forward", lambda: pytest.fail("compiled on a CPU"))
    y = _images(1)
    assert torch.equal(fit(Identity(), y, FitConfig(**SMALL, compile=True)).image,
                       fit(Identity(), y, FitConfig(**SMALL)).image)


@pytest.mark.parametrize("result_mode", ["average", "best", "last"])
def test_batched_fit_equals_unbatched_fit_of_each_slice(result_mode):
    y = _images(3)
    config = FitConfig(**SMALL, result=result_mode)
    together = fit(Identity(), y, config, slice_indices=[10, 11, 12]).image
    for j in range(3):
        alone = fit(Identity(), y[j : j + 1], config, slice_indices=[10 + j]).image
        torch.testing.assert_close(together[j : j + 1], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("stopping, architecture",
                         [("fixed", "deep"), ("discrepancy", "deep"), ("sure", "deep"), ("holdout", "deep"),
                          ("fixed", "conv")])
def test_passes_per_iteration_do_not_change_the_result(stopping, architecture, monkeypatch):
    """CPU cache-sized passes (one decoder per pass) give the one-pass result, weights and stopping points."""
    monkeypatch.setattr("dd_medical.core.stopping.HOLDOUT_PATIENCE", 40)
    clean = _images(3, seed=1) * 0
    rng = np.random.default_rng(2)
    y = (0.5 + torch.from_numpy(rng.normal(0, 0.1, clean.shape).astype(np.float32))).clamp(0, 1)
    y[2] = _images(1)[0]  # a structured slice that stops later than the flat ones
    config = FitConfig(**{**SMALL, "iterations": 300, "ensemble": 2}, stopping=stopping, sure_patience=40,
                       architecture=architecture)
    one = fit(Identity(), y, config, pass_size=12)
    for size in (1, 4):
        many = fit(Identity(), y, config, pass_size=size)
        torch.testing.assert_close(many.image, one.image, atol=1e-4, rtol=0)
        assert list(many.iterations) == list(one.iterations)
        assert many.weights.keys() == one.weights.keys()
        for key in one.weights if stopping == "fixed" else ():  # skipped passes keep their weights at the stop
            torch.testing.assert_close(many.weights[key], one.weights[key], atol=1e-4, rtol=0)
    if stopping != "fixed":
        assert len(set(one.iterations.tolist())) > 1  # slices stopped at different steps: some passes skipped


def test_passes_stay_cache_sized_on_cpu_and_fill_the_gpu_on_cuda():
    from dd_medical.core.fit import CPU_PASS_ELEMENTS, CUDA_PASS_ELEMENTS, instances_per_pass

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # the rule only reads the device type
    assert instances_per_pass(8, 64, 256, 256, cpu) == 1
    assert instances_per_pass(8, 64, 128, 128, cpu) == CPU_PASS_ELEMENTS // (64 * 128 * 128)
    assert instances_per_pass(3, 8, 32, 32, cpu) == 3
    assert CUDA_PASS_ELEMENTS // (64 * 512 * 512) == 16
    assert instances_per_pass(64, 64, 512, 512, cuda) == 16  # 4 equal passes
    assert instances_per_pass(40, 64, 512, 512, cuda) == 20  # 2 passes of >= 16 (not 16 + 16 + 8)
    assert instances_per_pass(12, 64, 512, 512, cuda) == 12  # too little work for two passes
    assert instances_per_pass(600, 8, 32, 32, cuda) == 600


@pytest.mark.parametrize("warmup", [0, 3])
def test_average_is_a_moving_average_whose_window_grows(warmup):
    """result="average": a_0 = x_0, a_t = d_t a_(t-1) + (1 - d_t) x_t with d_t = min(decay, t / (t + warmup))."""
    from dd_medical.core.decoder import BatchedDeepDecoder, slice_generator

    y = _images(1)
    n, decay = 5, 0.6
    base = FitConfig(**{**SMALL, "iterations": n}, average_decay=decay, average_warmup=warmup)
    averaged = fit(Identity(), y, base).image
    # x_t is the output of the weights after t steps: the "last" image of a t-step run (x_0: the initial decoder).
    with torch.no_grad():
        first = BatchedDeepDecoder(1, 32, 32, 8, 4, 1, [slice_generator(0, 0, 0)])()
    iterates = [first] + [fit(Identity(), y, FitConfig(**{**SMALL, "iterations": t}, result="last")).image
                          for t in range(1, n)]
    expected = iterates[0]
    for t in range(1, n):
        d = min(decay, t / (t + warmup)) if warmup else decay
        expected = d * expected + (1 - d) * iterates[t]
    torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=0)


def test_ensemble_members_differ_and_result_is_their_mean():
    y = _images(1)
    config = FitConfig(**{**SMALL, "ensemble": 3})
    result = fit(Identity(), y, config)
    assert result.weights["out_weight"].shape[0] == 3  # B * ensemble decoders
    members = [fit(Identity(), y, FitConfig(**SMALL)).image]  # member 0 alone equals a one-member fit
    assert result.image.shape == members[0].shape
    assert not torch.allclose(result.image, members[0], atol=1e-4)


def test_discrepancy_rule_stops_each_slice_at_its_noise_level():
    clean = _images(2, seed=1) * 0  # flat images: the decoder reaches the noise level quickly
    rng = np.random.default_rng(2)
    y = (0.5 + torch.from_numpy(rng.normal(0, 0.1, clean.shape).astype(np.float32))).clamp(0, 1)
    config = FitConfig(**{**SMALL, "iterations": 400}, stopping="discrepancy")
    result = fit(Identity(), y, config)
    assert all(0 < it < 400 for it in result.iterations)
    # Stopped near the noise level, not fitted into the noise.
    assert float(((result.image - y) ** 2).mean()) > 0.5 * 0.1**2


def test_input_noise_is_deterministic_per_slice_and_leaves_the_fixed_input_unchanged():
    y = _images(2)
    config = FitConfig(**SMALL, input_noise=0.005, result="last", stopping="fixed")
    together = fit(Identity(), y, config, slice_indices=[4, 5])
    alone = fit(Identity(), y[1:], config, slice_indices=[5])
    torch.testing.assert_close(together.image[1:], alone.image, atol=1e-4, rtol=0)
    plain = fit(Identity(), y, replace(config, input_noise=0.0), slice_indices=[4, 5])
    torch.testing.assert_close(together.weights["net_input"], plain.weights["net_input"], atol=0, rtol=0)
    assert not torch.allclose(together.image, plain.image, atol=1e-4)
    assert torch.equal(fit(Identity(), y, config, slice_indices=[4, 5]).image, together.image)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        FitConfig(iterations=0)
    with pytest.raises(ValueError):
        FitConfig(result="median")
    with pytest.raises(ValueError):
        FitConfig(learning_rate=-1)
    with pytest.raises(ValueError):
        FitConfig(input_noise=-0.1)
    with pytest.raises(ValueError):
        FitConfig(tv_weight=-0.01)
    with pytest.raises(ValueError):
        FitConfig(tv_weight=float("nan"))
    with pytest.raises(ValueError, match="architecture"):
        FitConfig(architecture="auto")  # removed: "both" (reconstruction) replaces it
    with pytest.raises(ValueError, match="'deep' or 'conv'"):
        fit(Identity(), _images(1), FitConfig(**SMALL, architecture="both"))  # "both" is the pipeline's


def test_total_variation_sums_the_absolute_differences_of_neighbours():
    step = torch.zeros(2, 1, 5, 6)
    step[0, :, :, 3:] = 0.5  # one vertical edge of 5 pixels, height 0.5
    step[1, :, 2:, :] = -2.0  # one horizontal edge of 6 pixels, height 2
    torch.testing.assert_close(total_variation(step), torch.tensor([2.5, 12.0]))
    assert float(total_variation(torch.full((1, 2, 4, 4), 0.3)).max()) == 0.0
    two = torch.cat([step[:1], 3 * step[:1]], dim=1)  # channels are averaged
    torch.testing.assert_close(total_variation(two), torch.tensor([5.0]))


def test_tv_weight_trades_misfit_for_a_flatter_image():
    y = _images(1, seed=2)
    config = FitConfig(**SMALL, stopping="fixed")
    plain = fit(Identity(), y, config)
    flat = fit(Identity(), y, replace(config, tv_weight=0.001))
    assert float(total_variation(flat.image)) < 0.8 * float(total_variation(plain.image))
    assert flat.loss_history[-1, 0] > plain.loss_history[-1, 0]  # the history is the data misfit alone
    assert torch.equal(fit(Identity(), y, replace(config, tv_weight=0.001)).image, flat.image)


def test_sure_stopping_returns_a_point_near_the_best_one():
    """Monte-Carlo SURE, with the noise level estimated from the slice, lands near the best stopping point."""
    from dd_medical.core.intensity import Window
    from dd_medical.phantom import make_phantom

    clean = torch.from_numpy(Window(-1000.0, 1000.0).to_unit(make_phantom(depth=1, size=64, seed=0).hu[0]))
    clean = clean.float()[None, None]
    rng = np.random.default_rng(5)
    y = (clean + torch.from_numpy(rng.normal(0, 0.1, clean.shape).astype(np.float32))).clamp(0, 1)
    base = dict(channels=32, blocks=5, ensemble=1)
    sure = fit(Identity(), y, FitConfig(**base, iterations=600, stopping="sure", sure_patience=80))
    mse = lambda image: float(((image - clean) ** 2).mean())  # noqa: E731
    fixed = [mse(fit(Identity(), y, FitConfig(**base, iterations=n, stopping="fixed")).image) for n in (100, 200, 400)]
    assert mse(sure.image) < 1.5 * min(fixed), (mse(sure.image), fixed)
    assert mse(sure.image) < 0.6 * mse(y)  # (the noisy MSE is 0.007: noise clipped at 0 in air)
    assert sure.iterations[0] < 600  # stopped by its patience after the minimum
    assert sure.weights["out_weight"].shape[0] == 2  # the decoder and its probe twin


def test_holdout_stopping_returns_a_point_near_the_best_one_without_a_noise_level(monkeypatch):
    """The error on held-out pixels finds the stopping point; no noise level is estimated or given."""
    from dd_medical.core import stopping
    from dd_medical.core.intensity import Window
    from dd_medical.phantom import make_phantom

    monkeypatch.setattr(stopping, "estimate_sigma", None)  # the rule must not need it
    monkeypatch.setattr(stopping, "HOLDOUT_PATIENCE", 60)
    clean = torch.from_numpy(Window(-1000.0, 1000.0).to_unit(make_phantom(depth=1, size=96, seed=0).hu[0]))
    clean = clean.float()[None, None]
    rng = np.random.default_rng(5)
    y = (clean + torch.from_numpy(rng.normal(0, 0.1, clean.shape).astype(np.float32))).clamp(0, 1)
    base = dict(channels=16, blocks=4, ensemble=1)
    held = fit(Identity(), y, FitConfig(**base, iterations=600, stopping="holdout"))
    mse = lambda image: float(((image - clean) ** 2).mean())  # noqa: E731
    fixed = [mse(fit(Identity(), y, FitConfig(**base, iterations=n, stopping="fixed")).image)
             for n in (60, 150, 300, 600)]
    assert mse(held.image) < 1.25 * min(fixed), (mse(held.image), fixed)
    assert mse(held.image) < 0.6 * mse(y)
    assert held.iterations[0] < 600  # stopped by its patience after the minimum


def test_holdout_pixels_are_out_of_every_member_fit_and_follow_the_seed():
    from dd_medical.core.noise import signal_mask
    from dd_medical.core.stopping import HOLDOUT_FRACTION, HOLDOUT_PIXELS, Holdout

    def weights(y: torch.Tensor, seed: int, indices: list[int]) -> torch.Tensor:
        rule = Holdout()
        rule.start(y, y.repeat_interleave(3, dim=0), (1, *y.shape[-2:]), None, indices,
                   replace(FitConfig(**{**SMALL, "ensemble": 3}), seed=seed))
        return rule.weights.view(2, 3, 1, *y.shape[-2:])

    y = _images(2, size=64)
    w = weights(y, 0, [0, 1])
    assert torch.equal(w[:, 0], w[:, 1]) and torch.equal(w[:, 0], w[:, 2])  # the same pixels for every member
    held = w[:, 0, 0] == 0
    assert not held[~signal_mask(y)[:, 0]].any()
    assert not torch.equal(held[0], held[1])  # each slice its own pixels ...
    assert torch.equal(weights(y, 0, [0, 1]), w) and not torch.equal(weights(y, 1, [0, 1]), w)  # ... from its seed
    assert torch.equal(weights(y, 0, [1, 7])[0], w[1])  # a slice's pixels do not depend on its batch
    carrying = signal_mask(y)[:, 0].flatten(1).sum(1).float()
    assert torch.allclose(held.flatten(1).sum(1) / carrying, HOLDOUT_PIXELS / carrying, rtol=0.15)  # a small slice
    big = _images(2, size=192)
    held = weights(big, 0, [0, 1])[:, 0, 0] == 0
    assert abs(float(held.float().mean()) / float(signal_mask(big).float().mean()) - HOLDOUT_FRACTION) < 0.01


def test_sure_stopping_needs_image_shaped_measurements():
    from dd_medical.core.operators import GaussianProjection

    op = GaussianProjection(64, (16, 16), seed=0)
    y = op.forward(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="image-shaped"):
        fit(op, y, FitConfig(**SMALL, stopping="sure"), noise_sigma=0.1)
