from dataclasses import replace

import numpy as np
import pytest
import torch

import dd_medical
from dd_medical.core.fit import FitConfig
from dd_medical.errors import InputError
from dd_medical.metrics import psnr
from dd_medical.pipeline import auto_batch_size, denoise_volume, resolve_device, slab_indices

FAST = FitConfig(channels=32, blocks=4, iterations=300, ensemble=1)


def phantom_hu(depth: int = 3, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small piecewise-constant HU volume and a noisy copy (sigma 60 HU)."""
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    body = (xx / (0.45 * size)) ** 2 + (yy / (0.35 * size)) ** 2 < 1
    lesion = (xx - 5) ** 2 + (yy + 3) ** 2 < 16
    clean = np.where(body, 40.0, -1000.0) + np.where(lesion, 160.0, 0.0)
    clean = np.repeat(clean[None], depth, axis=0).astype(np.float32)
    rng = np.random.default_rng(seed)
    return clean, (clean + rng.normal(0, 60, clean.shape)).astype(np.float32)


def test_denoise_volume_improves_psnr_and_keeps_shape_and_units():
    clean, noisy = phantom_hu()
    original = noisy.copy()
    out = denoise_volume(noisy, FAST, device="cpu", progress=False)
    assert out.shape == noisy.shape and out.dtype == np.float32
    np.testing.assert_array_equal(noisy, original)  # input not modified
    to_unit = lambda v: np.clip((v + 1000) / 2000, 0, 1)  # noqa: E731
    assert psnr(to_unit(out), to_unit(clean)).mean() > psnr(to_unit(noisy), to_unit(clean)).mean() + 3


def test_result_does_not_depend_on_batch_size():
    _, noisy = phantom_hu(depth=3)
    config = FitConfig(channels=8, blocks=4, iterations=40, ensemble=2)
    one = denoise_volume(noisy, config, device="cpu", progress=False, batch_size=1)
    three = denoise_volume(noisy, config, device="cpu", progress=False, batch_size=3)
    two = denoise_volume(noisy, config, device="cpu", progress=False, batch_size=2)
    span = noisy.max() - noisy.min()
    assert np.abs(one - three).max() / span < 1e-4
    assert np.abs(one - two).max() / span < 1e-4


def test_progress_callback_rises_to_one():
    _, noisy = phantom_hu(depth=2, size=32)
    seen: list[float] = []
    denoise_volume(noisy, FitConfig(channels=4, blocks=3, iterations=10, ensemble=1), device="cpu",
                   progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_one_call_api_on_2d_numpy_and_torch():
    _, noisy = phantom_hu(depth=1, size=32)
    config = FitConfig(ensemble=1)
    out = dd_medical.denoise(noisy[0], iterations=10, channels=4, device="cpu", config=config)
    assert isinstance(out, np.ndarray) and out.shape == (32, 32)
    out_t = dd_medical.denoise(torch.from_numpy(noisy[0]), iterations=10, channels=4, device="cpu", config=config)
    np.testing.assert_allclose(out, out_t, atol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 3, 32, 32)), "expected a 2D slice"),
        (np.zeros(32), "expected a 2D slice"),
        (np.full((32, 32), np.nan), "NaN"),
        (np.zeros((4, 4)), "too small"),
        (np.zeros((32, 32), dtype=complex), "complex"),
    ],
)
def test_bad_arrays_get_clear_errors(bad, message):
    with pytest.raises(InputError, match=message):
        denoise_volume(bad, FAST, device="cpu", progress=False)


def test_device_choice_and_batch_size():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")
    for bad in ("gpu", "cuda0", "tpu"):
        with pytest.raises(InputError, match="unknown device"):
            resolve_device(bad)
    b = auto_batch_size(300, 512, 512, FitConfig(), torch.device("cpu"))
    assert 1 <= b <= 16


def test_sequential_baseline_equals_batched():
    """The sequential baseline (one slice at a time, float32: ``batch_size=1``, ``amp=False``) gives the batched
    result."""
    _, noisy = phantom_hu(depth=2, size=32)
    config = FitConfig(channels=8, blocks=4, iterations=40, ensemble=1, result="best", stopping="fixed")
    sequential = denoise_volume(noisy, replace(config, amp=False), device="cpu", progress=False, batch_size=1)
    batched = denoise_volume(noisy, config, device="cpu", progress=False, batch_size=2)
    span = noisy.max() - noisy.min()
    assert np.abs(sequential - batched).max() / span < 1e-4
    assert np.abs(sequential - noisy).max() / span > 1e-3  # the fit did change the slices


def test_slab_indices_are_mirrored_at_the_ends():
    np.testing.assert_array_equal(slab_indices(4, 3), [[1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 2]])
    np.testing.assert_array_equal(slab_indices(2, 5), [[1, 0, 1], [0, 1, 0]])  # at most 2 * D - 1 slices
    np.testing.assert_array_equal(slab_indices(1, 5), [[0]])
    with pytest.raises(ValueError, match="odd"):
        FitConfig(slab=2)


def test_slab_subset_equals_the_same_slices_of_the_whole_volume():
    _, noisy = phantom_hu(depth=5, size=32)
    config = FitConfig(channels=8, blocks=3, iterations=30, ensemble=1, slab=3)
    whole = denoise_volume(noisy, config, device="cpu", progress=False)
    span = noisy.max() - noisy.min()
    for (start, stop), batch in [((0, 2), 1), ((2, 5), 2), ((4, 5), None)]:
        part = denoise_volume(noisy, config, device="cpu", progress=False, slices=(start, stop), batch_size=batch)
        assert part.shape == (stop - start, 32, 32)
        assert np.abs(part - whole[start:stop]).max() / span < 1e-4
    with pytest.raises(ValueError, match="slices"):
        denoise_volume(noisy, config, device="cpu", progress=False, slices=(3, 3))


def test_slabs_use_the_neighbouring_slices():
    """Same anatomy, independent noise in every slice: a 3-slice slab denoises better than slice by slice."""
    clean, noisy = phantom_hu(depth=6, size=48)
    to_unit = lambda v: np.clip((v + 1000) / 2000, 0, 1)  # noqa: E731
    scores = {}
    for slab in (1, 3):
        out = denoise_volume(noisy, replace(FAST, slab=slab), device="cpu", progress=False)
        scores[slab] = float(psnr(to_unit(out), to_unit(clean)).mean())
    assert scores[3] > scores[1] + 0.5, scores


def test_presets_resolve_names_overrides_and_combinations():
    from dd_medical.presets import PRESETS, STRENGTHS, presets, resolve

    assert STRENGTHS == ("low", "medium", "high") and set(STRENGTHS) <= set(PRESETS["denoise"])
    assert resolve("denoise") == resolve("denoise", "default") == PRESETS["denoise"]["medium"]
    assert presets("denoise")[0] == "medium" and "default" in presets("denoise")
    assert resolve("denoise", "fast", iterations=7, seed=None).iterations == 7  # None overrides are ignored
    config = FitConfig(channels=8)
    assert resolve("denoise", config=config, ensemble=1) == replace(config, ensemble=1)
    for call, message in [(lambda: resolve("denoise", "extreme"), "unknown preset 'extreme'"),
                          (lambda: resolve("denoise", colour=1), "unknown setting"),
                          (lambda: resolve("denoise", "fast", config=config), "not both"),
                          (lambda: resolve("denoise", architecture="both"), "architecture='both'"),
                          (lambda: resolve("reconstruct/ct", slab=3), "slab=3"),
                          (lambda: resolve("denoise", iterations=0), "iterations"),
                          (lambda: resolve("segment"), "unknown task")]:
        with pytest.raises(InputError, match=message):
            call()
    with pytest.raises(InputError, match="unknown preset"):
        dd_medical.denoise(np.zeros((16, 16), np.float32), "extreme", device="cpu")
