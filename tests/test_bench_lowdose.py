"""The scanner-like benchmark (``benchmarks/bench_quality.py --lowdose``, ``benchmarks/lowdose.py``)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from _bench import run_benchmark  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import lowdose  # noqa: E402


def _case(size: int = 48) -> lowdose.Case:
    from dd_medical.phantom import PIXEL_MM, SLICE_MM, make_phantom

    phantom = make_phantom(depth=1, size=2 * size, seed=0)
    case = lowdose.Case("body", phantom.hu.copy(), PIXEL_MM, SLICE_MM)
    lowdose.prepare(case, seed=0)
    return case


def test_quick_run_writes_a_record_with_every_method_and_score(tmp_path):
    out, png = tmp_path / "lowdose.json", tmp_path / "lowdose.png"
    proc = run_benchmark("bench_quality.py", "--lowdose", "--quick", "--device", "cpu", "--json", str(out),
                         "--figure", str(png))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"title", "topic", "what", "machine", "command", "columns", "rows", "raw", "grid"} <= set(data)
    assert "quick" in data["title"] and "--lowdose" in data["command"]
    methods = {r[1] for r in data["rows"]}
    assert {"noisy FBP", "dd-medical", "BM3D (estimated PSD)", "BM3D (oracle PSD)", "TV (calibrated)", "TV (oracle)",
            "anisotropic diffusion (calibrated)", "anisotropic diffusion (oracle)"} <= methods
    assert all(len(row) == len(data["columns"]) for row in data["rows"])
    raw = data["raw"]
    assert {r["dataset"] for r in raw} == {"CT_small", "phantom"}
    for r in raw:
        assert 5 < r["psnr_wide"] < 60 and 0 < r["ssim_wide"] <= 1 and r["psnr_scan"] >= r["psnr_wide"] - 5
        assert r["noise_std_hu"] > 0 and r["seconds"] >= 0
    phantom = [r for r in raw if r["dataset"] == "phantom"]
    assert all(r["lesion_kept_pct"] is not None for r in phantom)  # the phantom brings its lesions
    assert png.exists() and "FBP noise" in proc.stdout

    again = tmp_path / "again.json"  # resumed: BM3D run again, every other method's rows copied
    proc = run_benchmark("bench_quality.py", "--lowdose", "--quick", "--device", "cpu", "--methods", "BM3D",
                         "--keep-from", str(out), "--json", str(again))
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = json.loads(again.read_text())
    assert [r[:3] for r in second["rows"]] == [r[:3] for r in data["rows"]]
    ours = lambda d: [r for r in d["raw"] if r["method"] == "dd-medical"]  # noqa: E731
    assert ours(second) == ours(data) and f"    {'dd-medical':<30} PSNR" not in proc.stdout  # not fitted again


def test_scan_without_noise_is_close_to_the_anatomy_and_noise_scales_with_dose():
    case = _case()
    line = lowdose.sinogram(case)
    clean = lowdose.scan(case, line, None, 0)
    assert clean.shape == case.anatomy.shape
    inside = case.body
    # the FBP is a blurred copy of the anatomy: close in soft tissue, not equal at edges
    soft = case.tissue["soft tissue"]
    assert abs(float((clean - case.anatomy)[soft].mean())) < 15
    stds = [np.std((lowdose.scan(case, line, photons, 1) - clean)[inside]) for photons in (1e5, 2e4)]
    assert 1 < stds[0] < stds[1]
    assert stds[1] / stds[0] == pytest.approx(math.sqrt(5), rel=0.25)  # Poisson: std ~ 1 / sqrt(photons)
    assert np.array_equal(lowdose.scan(case, line, 1e5, 1), lowdose.scan(case, line, 1e5, 1))


def test_planted_lesions_are_in_soft_tissue_and_scored_against_the_anatomy():
    from dd_medical.phantom import PIXEL_MM, make_phantom

    fine = make_phantom(depth=1, size=256, seed=0).hu  # as if real data: no lesion masks given
    case = lowdose.Case("body", fine.copy(), PIXEL_MM, None)
    lowdose.prepare(case, seed=0)
    assert case.planted and set(np.unique(case.lesions)) - {0} <= set(case.planted)
    assert np.abs(case.fine - fine).max() == pytest.approx(max(abs(c) for c in case.planted.values()), abs=0.5)
    scores = lowdose.score(case.anatomy, case, case.anatomy)
    assert scores["lesion_kept_pct"] == pytest.approx(100.0)  # the anatomy keeps all of its own contrast
    flat = case.anatomy.copy()
    flat[case.lesions > 0] = np.nan
    from scipy import ndimage

    filled = np.where(case.lesions > 0, ndimage.median_filter(np.nan_to_num(flat), (1, 7, 7)), case.anatomy)
    assert lowdose.score(filled, case, case.anatomy)["lesion_kept_pct"] < 50  # lesions painted over: caught


def test_estimated_psd_finds_the_level_and_shape_of_coloured_noise():
    rng = np.random.default_rng(0)
    n = 128
    white = rng.normal(0, 1, (2, n, n))
    blur = np.fft.ifft2(np.fft.fft2(white) * np.exp(-((np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n) ** 2)
                                                      / 0.02))).real
    noise = 0.01 * blur / blur.std()
    image = 0.5 + noise
    body = np.ones(image.shape, bool)
    psd = lowdose.estimated_psd(image, body)
    truth = lowdose.oracle_psd(noise, body)
    assert psd.shape == (n, n)
    assert psd.mean() / truth.mean() == pytest.approx(1.0, rel=0.3)  # level: the variance x pixels
    low, high = psd[0, 1] / psd[n // 2, n // 2], truth[0, 1] / truth[n // 2, n // 2]
    assert low > 10 and high > 10  # both see the noise is low-pass, not white


def test_calibrated_rows_use_other_datasets_and_oracle_rows_the_test_image():
    grid = []
    for dataset, best in (("a", 0.1), ("b", 0.1), ("c", 0.3)):
        for p in (0.1, 0.3):
            grid.append(dict(dataset=dataset, seed=0, dose="d", method="TV", param=[p],
                             psnr_wide=30.0 - abs(p - best) * 10))
    rows = {(r["dataset"], r["method"]): r for r in lowdose.pick(grid)}
    assert rows[("c", "TV (oracle)")]["param"] == [0.3]
    assert rows[("c", "TV (calibrated)")]["param"] == [0.1]  # chosen on a and b, not on c itself
    assert rows[("a", "TV (calibrated)")]["param"] == [0.1]
