import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
from _bench import run_benchmark  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_quality  # noqa: E402


def test_bench_quality_quick_writes_rows_figure_and_phantom_fields(tmp_path):
    out, png = tmp_path / "quality.json", tmp_path / "quality.png"
    proc = run_benchmark("bench_quality.py", "--quick", "--device", "cpu", "--only", "ct_small", "--only", "phantom",
                         "--json", str(out), "--figure", str(png))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["dataset"] for r in rows} == {"ct_small", "phantom"}
    assert {(r["noise"], r["level"]) for r in rows} == {("gaussian", 25.0), ("low-dose", 1e5)}
    for r in rows:
        optional = {"bias_hu", "bias_tissue", "contrast_hu", "cnr", "psnr_image", "ssim_image"}
        assert set(data["columns"]) - optional <= set(r)
        if r["status"] == "ok":
            assert math.isfinite(r["psnr"]) and 10 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and r["seconds"] >= 0
    ran = {r["method"] for r in rows if r["status"] == "ok"}
    assert {"noisy", "dd-medical 2D", "BM3D", "NLM", "TV (oracle weight)", "anisotropic diffusion (oracle)",
            "reference-style decoder"} <= ran
    volumetric = [r for r in rows if r["method"] == "dd-medical volumetric"]
    assert {r["dataset"] for r in volumetric} == {"phantom"}  # volumes only: on one slice it is the 2D row
    assert all(r["status"] == "ok" for r in volumetric)
    assert "BM4D" not in ran  # volumes too thin in --quick: reported as skipped
    low_dose = [r for r in rows if r["noise"] == "low-dose" and r["method"] == "noisy"]
    assert all(5 < r["noise_std_hu"] < 100 for r in low_dose)
    for r in rows:  # low-dose rows are also scored against the image; Gaussian rows' reference is the image already
        scored = r["status"] == "ok" and r["noise"] == "low-dose"
        assert ("psnr_image" in r) == scored and (not scored or 10 < r["psnr_image"] < r["psnr"] + 20)

    phantom = [r for r in rows if r["dataset"] == "phantom" and r["status"] in ("ok", "reference")]
    for r in phantom:
        assert {"bias_hu", "bias_tissue", "contrast_hu", "cnr"} <= set(r)
        assert r["bias_hu"] is not None and 0 <= r["bias_hu"] < 1000
    clean = [r for r in phantom if r["method"] == "clean"]
    assert len(clean) == 2 and all(5 < r["contrast_hu"] < 30 for r in clean)  # lesions are 10-20 HU above liver
    assert all(r["cnr"] is not None for r in phantom if r["method"] == "noisy")

    figure = data["figure"]
    methods_run = len({r["method"] for r in rows if r["status"] == "ok"} - {"noisy"})
    assert (figure["rows"], figure["cols"]) == (2 * 2 * 2, methods_run + 2)  # 2 datasets x 2 noises, image + diff
    with Image.open(png) as image:
        assert image.size == (figure["cols"] * figure["panel_px"],
                              figure["rows"] * (figure["panel_px"] + figure["label_px"]))
    assert "| dataset | noise |" in proc.stdout and "noise std" in proc.stdout


def test_low_dose_noise_scales_with_photons_and_noise_free_path_is_clean_fbp():
    from dd_medical.phantom import PIXEL_MM, make_phantom

    hu = make_phantom(depth=1, size=64, seed=0).hu[0]
    clean = bench_quality.low_dose(hu, None, PIXEL_MM)
    assert clean.shape == hu.shape and np.isfinite(clean).all()
    assert np.abs(bench_quality.low_dose(hu, 1e12, PIXEL_MM) - clean).max() < 1.0  # HU
    stds = [np.std(bench_quality.low_dose(hu, photons, PIXEL_MM, seed=1) - clean) for photons in (1e5, 2e4)]
    assert 3 < stds[0] < 60  # HU: a realistic low-dose level
    assert stds[1] / stds[0] == pytest.approx(np.sqrt(5), rel=0.15)
    again = bench_quality.low_dose(hu, 1e5, PIXEL_MM, seed=1)
    assert np.array_equal(again, bench_quality.low_dose(hu, 1e5, PIXEL_MM, seed=1))  # deterministic given a seed
    volume = bench_quality.low_dose_volume(np.stack([hu, hu]), 1e5, PIXEL_MM, seed=1)
    assert np.array_equal(volume[0], again) and not np.array_equal(volume[0], volume[1])  # slice k: seed + k
