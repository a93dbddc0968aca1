"""The CUDA path: batching, passes, bf16 autocast, torch.compile and out-of-memory handling on a GPU.

Skipped where no CUDA GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``. The same code
paths (``fit``, ``fit_slices``, ``BatchedDeepDecoder``) are exercised on the CPU by the rest of the suite.

On the CPU a slice's result equals its unbatched fit to 1e-4 (``test_fitting.py``). On CUDA it does not, and these
tests compare quality and mean differences instead: cuBLAS picks its matrix kernels (and their summation order) by
batch size, and Adam turns those last-bit differences into whole steps wherever a gradient is near zero (its first
step is ``lr * sign(g)``). Measured on an NVIDIA H200, float32: batched against unbatched, max abs difference
5.3e-3 after 80 steps (64x64, [0, 1] units); CUDA against CPU 8.5e-3; 3 steps at 256x256 4.7e-3.
"""

import numpy as np
import pytest
import torch

from dd_medical.core.fit import FitConfig, fit
from dd_medical.core.intensity import Window
from dd_medical.core.operators import Identity
from dd_medical.metrics import psnr
from dd_medical.pipeline import Tracker, denoise_volume, fit_slices

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = dict(channels=16, blocks=4, iterations=80, loss_every=5, ensemble=1, stopping="fixed", amp=False)


def _same_quality(a: torch.Tensor, b: torch.Tensor, clean: torch.Tensor, mean_abs: float = 5e-3) -> None:
    """``a`` and ``b`` (same shape, [0, 1]) are the same fit up to CUDA's batch-dependent rounding."""
    assert float((a - b).abs().mean()) < mean_abs
    pa, pb = (psnr(x.numpy(), clean.numpy()) for x in (a, b))
    assert np.abs(pa - pb).max() < 0.1


def _fit_slices(y: torch.Tensor, config: FitConfig, batch_size: int) -> torch.Tensor:
    """Every slice of ``y`` fitted on CUDA, ``batch_size`` at a time (halved on out-of-memory), no progress bar."""
    tracker = Tracker(y.shape[0], "fitting", False)
    try:
        return fit_slices(Identity(), y, config, torch.device("cuda"), batch_size, tracker)
    finally:
        tracker.close()


def _noisy(batch: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    clean = np.stack([0.5 + 0.3 * np.sin((3 + b) * xx) * np.cos(2 * yy) for b in range(batch)])[:, None]
    noisy = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)
    return torch.from_numpy(clean.astype(np.float32)), torch.from_numpy(noisy.astype(np.float32))


def test_batched_fit_on_cuda_matches_unbatched_and_passes_do_not_matter():
    clean, y = _noisy(3)
    config = FitConfig(**SMALL)
    together = fit(Identity(), y, config, slice_indices=[5, 6, 7], device="cuda")
    for j in range(3):
        alone = fit(Identity(), y[j:j + 1], config, slice_indices=[5 + j], device="cuda")
        _same_quality(together.image[j:j + 1], alone.image, clean[j:j + 1])
    stopping = FitConfig(**{**SMALL, "ensemble": 2, "iterations": 300, "stopping": "discrepancy"})
    passes = fit(Identity(), y, stopping, device="cuda", pass_size=1)
    one_pass = fit(Identity(), y, stopping, device="cuda", pass_size=6)
    _same_quality(passes.image, one_pass.image, clean)
    assert np.abs(passes.iterations - one_pass.iterations).max() <= 0.2 * one_pass.iterations.max()


def test_cuda_matches_cpu():
    clean, y = _noisy(2)
    config = FitConfig(**SMALL)
    _same_quality(fit(Identity(), y, config, device="cuda").image, fit(Identity(), y, config, device="cpu").image,
                  clean)


def test_bf16_autocast_keeps_quality():
    clean, y = _noisy(2, size=96)
    config = FitConfig(**{**SMALL, "iterations": 300})
    fp32 = fit(Identity(), y, config, device="cuda").image
    bf16 = fit(Identity(), y, FitConfig(**{**SMALL, "iterations": 300, "amp": True}), device="cuda").image
    gain32, gain16 = (psnr(x.numpy(), clean.numpy()).mean() for x in (fp32, bf16))
    assert gain16 > psnr(y.numpy(), clean.numpy()).mean() + 3  # it denoises
    assert abs(gain16 - gain32) < 0.5


def test_compiled_forward_equals_eager_on_cuda():
    clean, y = _noisy(2)
    eager = fit(Identity(), y, FitConfig(**{**SMALL, "iterations": 30}), device="cuda").image
    compiled = fit(Identity(), y, FitConfig(**{**SMALL, "iterations": 30}, compile=True), device="cuda").image
    _same_quality(compiled, eager, clean)  # fused kernels round differently; Adam turns that into whole steps


def test_out_of_memory_halves_the_batch_and_keeps_the_result(caplog):
    clean, y = _noisy(8, size=256)
    config = FitConfig(channels=64, blocks=6, iterations=3, ensemble=1, stopping="fixed", amp=False)
    torch.cuda.empty_cache()
    used = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    reference = _fit_slices(y, config, 1)
    one = torch.cuda.max_memory_allocated() - used  # what one slice needs
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((used + 2.5 * one) / total)  # 8 and 4 slices fail, 2 fit
    try:
        with caplog.at_level("WARNING", logger="dd_medical.pipeline"):
            halved = _fit_slices(y, config, 8)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert "retrying with 4 slices" in caplog.text and "retrying with 2 slices" in caplog.text
    _same_quality(halved, reference, clean)


def test_denoise_volume_auto_uses_the_gpu_and_matches_the_cpu():
    clean, y = _noisy(4)
    hu = y[:, 0].numpy() * 2000 - 1000
    config = FitConfig(**SMALL)
    gpu = denoise_volume(hu, config, device="auto", progress=False, window=Window(-1000, 1000))
    cpu = denoise_volume(hu, config, device="cpu", progress=False, window=Window(-1000, 1000))
    assert gpu.shape == hu.shape and gpu.dtype == np.float32
    _same_quality(torch.from_numpy((gpu + 1000) / 2000)[:, None], torch.from_numpy((cpu + 1000) / 2000)[:, None],
                  clean)
