import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
pywt = pytest.importorskip("pywt")
import bench_compress  # noqa: E402

from dd_medical import presets  # noqa: E402
from dd_medical.core.decoder import num_parameters  # noqa: E402
from dd_medical.volume import Volume  # noqa: E402


def _smooth_image(n: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] / n
    return (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + 0.15 * (x > 0.5)).clip(0, 1)


def test_channels_for_factor_gives_the_readme_table_decoders():
    assert bench_compress.channels_for_factor(256 * 256, 10) == 32
    assert bench_compress.channels_for_factor(256 * 256, 40) == 15
    assert bench_compress.channels_for_factor(128 * 128, 10) == 15
    k = bench_compress.channels_for_factor(512 * 512, 40)
    assert abs(np.log(512 * 512 / num_parameters(k, 6, 1) / 40)) < 0.1


@pytest.mark.parametrize("wavelet", ["haar", "bior4.4"])
def test_wavelet_threshold_keeps_that_many_coefficients(wavelet):
    image = _smooth_image()
    full = bench_compress.wavelet_threshold(image, image.size, wavelet)
    np.testing.assert_allclose(full, image, atol=1e-9)  # keeping all: perfect reconstruction
    errors = [bench_compress.psnr(bench_compress.wavelet_threshold(image, keep, wavelet), image)
              for keep in (20, 100, 400)]
    assert errors[0] < errors[1] < errors[2]
    # the reconstruction is exactly the inverse of the kept coefficients: re-transforming it keeps <= keep non-zeros
    rec = bench_compress.wavelet_threshold(image, 100, wavelet)
    array, _ = pywt.coeffs_to_array(pywt.wavedec2(rec, wavelet, mode="periodization"))
    if wavelet == "haar":  # orthogonal and no clipping on this image: the coefficients come back
        assert np.count_nonzero(np.abs(array) > 1e-9) <= 100


def test_jpeg2000_stays_within_the_byte_budget():
    pytest.importorskip("openjpeg")
    image = _smooth_image()
    for budget in (300, 1200):
        decoded, nbytes = bench_compress.jpeg2000_at_size(image, budget, 8)
        assert nbytes <= budget
        assert decoded.shape == image.shape and 0 <= decoded.min() and decoded.max() <= 1
    small, _ = bench_compress.jpeg2000_at_size(image, 300, 8)
    large, _ = bench_compress.jpeg2000_at_size(image, 1200, 8)
    assert bench_compress.psnr(large, image) > bench_compress.psnr(small, image)


def test_run_measures_the_real_file_against_both_baselines():
    pytest.importorskip("openjpeg")
    image = _smooth_image() * 1000 - 500  # "HU"
    volume = Volume(image[None].astype(np.float32), modality="CT")
    settings = presets.resolve("compress", "reference", iterations=30, learning_rate=0.01)
    assert settings.final_learning_rate is None and settings.norm_first and settings.input_noise == 0.005
    rows = bench_compress.run([("test 64", volume, 16)], (10.0,), 8, "cpu", settings, refine=3)
    (row,) = rows
    assert row["k"] == bench_compress.channels_for_factor(64 * 64, 10.0)
    assert row["parameters"] == num_parameters(row["k"], 6, 1)
    assert row["j2k_bytes"] <= row["ddc_bytes"]
    assert row["ddc_bytes"] > row["parameters"]  # 8-bit weights plus the header
    for key in ("dd_psnr", "dd_psnr_unquantised", "haar_psnr", "bior4.4_psnr", "j2k_psnr"):
        assert np.isfinite(row[key]) and 5 < row[key] < 100, key
    assert 0 < row["dd_ssim"] <= 1
