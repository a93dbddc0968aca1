"""The realistic reconstruction benchmark: ``benchmarks/bench_reconstruct.py --realistic`` (``realistic.py``)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sigpy")
pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[1]
from _bench import run_benchmark  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import realistic  # noqa: E402

from dd_medical.core.operators import CartesianFourier  # noqa: E402
from dd_medical.core.operators.sense import SensitivityFourier  # noqa: E402
from dd_medical.io.raw import read_raw  # noqa: E402


def _disk(n: int, radius: float = 0.6) -> np.ndarray:
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    return ((x**2 + y**2) < radius**2).astype(np.float32) * (0.6 + 0.4 * (x > 0))


def _ct_slice(n: int = 48) -> np.ndarray:
    """A fine-grid HU slice ``(2n, 2n)``: an off-centre ellipse of soft tissue with a bone insert, air around."""
    y, x = np.mgrid[-1 : 1 : 2 * n * 1j, -1 : 1 : 2 * n * 1j]
    hu = np.full((2 * n, 2 * n), -1000.0, np.float32)
    hu[((x - 0.1) / 0.75) ** 2 + (y / 0.55) ** 2 < 1] = 40.0
    hu[(x + 0.3) ** 2 + (y - 0.15) ** 2 < 0.02] = 900.0
    hu[(x - 0.4) ** 2 + (y + 0.2) ** 2 < 0.01] = -100.0
    return hu


def test_quick_run_writes_a_record_with_every_method_and_a_readable_scan(tmp_path):
    out, h5 = tmp_path / "realistic.json", tmp_path / "h5"
    proc = run_benchmark("bench_reconstruct.py", "--realistic", "--quick", "--device", "cpu", "--json", str(out),
                         "--h5-dir", str(h5), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"title", "topic", "what", "machine", "command", "source", "columns", "rows", "raw", "grid",
            "calibrated_weights", "geometry", "rail_rows"} <= set(data)
    assert "quick" in data["title"] and "--realistic" in data["command"] and data["topic"] == "reconstruction"
    assert all(len(row) == len(data["columns"]) for row in data["rows"])
    methods = {(r[0], r[1]) for r in data["rows"]}
    mri, ct = "MRI 4x equispaced", "CT 60 views 1e5 photons"
    for name in ("fully sampled RSS", "zero-filled RSS", "dd-medical") + tuple(
            f"{m} ({k})" for m in ("SENSE", "l1-wavelet", "TV") for k in ("calibrated", "oracle")):
        assert (mri, name) in methods, name
    for name in ("FBP ramp", "FBP Hann", "TV (calibrated)", "TV (oracle)", "dd-medical"):
        assert (ct, name) in methods, name
    for r in data["raw"]:
        assert r["role"] == "test" and r["image"] in ("MR2_UNCR", "CT_small")
        for key in ("psnr_body", "ssim_body", "psnr_image", "ssim_image", "seconds"):
            assert r[key] is not None and math.isfinite(r[key]), (r["method"], key)
        assert 5 < r["psnr_body"] < 70 and -1 < r["ssim_body"] <= 1
    # the calibrated weight comes from the calibration image, and every grid row was run on both images
    assert set(data["calibrated_weights"]) == {mri, ct}
    assert {r["role"] for r in data["grid"]} == {"calibration", "test"}
    calibration = [r for r in data["grid"] if r["setting"] == ct and r["role"] == "calibration"]
    assert data["calibrated_weights"][ct]["TV"] == max(calibration, key=lambda r: r["psnr_body"])["weight"]
    ours = [r for r in data["raw"] if r["method"] == "dd-medical"]
    assert all(r["spread_body"] is not None and r["spread_body"] >= 0 and r["below_baseline"] is not None
               for r in ours)  # the quick CT fit runs two decoders, MRI's default (SENSE) two
    assert [row[0] for row in data["rail_rows"]] == [mri, ct]
    (check,) = data["geometry"]
    assert check["sinogram_difference_aligned"] < check["sinogram_difference_misaligned"]
    scans = sorted(h5.glob("*.h5"))
    assert [p.name for p in scans] == ["mri_4x_equispaced_0.h5"]
    measurements, operator, modality = read_raw(scans[0])
    assert modality == "MR" and isinstance(operator, SensitivityFourier) and operator.coils == realistic.QUICK_COILS
    assert tuple(measurements.shape) == (1, realistic.QUICK_COILS, realistic.QUICK_MRI_SIZE,
                                         realistic.QUICK_MRI_SIZE, 2)


def test_fastmri_h5_round_trip_through_read_raw(tmp_path):
    import h5py

    truth = _disk(32)
    maps = realistic.coil_maps(6, 32)
    case = realistic.simulate_mri("disk", truth, maps, 4, "random", 30.0, seed=3)
    path = realistic.write_fastmri_h5(tmp_path / "scan.h5", case.kspace[None], case.mask, acceleration=4,
                                      centre_lines=case.centre_lines,
                                      reconstruction_rss=realistic.rss(realistic.ifft2c(case.full))[None])
    measurements, operator, modality = read_raw(path)
    # 3 fully sampled centre lines at 32 px: too few for coil sensitivities, so the coil images are fitted (a
    # warning says so; with a wider centre it is SENSE: tests/test_sense.py)
    assert modality == "MR" and isinstance(operator, CartesianFourier)
    assert operator.coils == 6 and not operator.real
    assert tuple(measurements.shape) == (1, 6, 32, 32, 2)
    np.testing.assert_array_equal(operator.mask[0].numpy(), case.mask)
    assert operator.acceleration == pytest.approx(case.mask.size / case.mask.sum())
    back = torch.view_as_complex(measurements.contiguous()).numpy()[0]
    np.testing.assert_array_equal(back, case.kspace)
    with h5py.File(path, "r") as f:
        assert f["kspace"].dtype == np.complex64 and f["mask"].dtype == bool
        assert f.attrs["num_low_frequency"] == case.centre_lines and f.attrs["acceleration"] == 4
        assert f["reconstruction_rss"].shape == (1, 32, 32)
        assert b"<matrixSize><x>32</x><y>32</y>" in f["ismrmrd_header"][()]
        assert not any("patient" in key.lower() for key in f.attrs)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary file left
    with pytest.raises(ValueError, match="slices, coils, H, W"):
        realistic.write_fastmri_h5(tmp_path / "bad.h5", case.kspace, case.mask, acceleration=4, centre_lines=3)


def test_coil_maps_are_normalised_and_distinct():
    maps = realistic.coil_maps(8, 64)
    assert maps.shape == (8, 64, 64) and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sqrt((np.abs(maps) ** 2).sum(axis=0)), 1.0, rtol=1e-5)
    flat = maps.reshape(8, -1)
    gram = np.abs(flat @ flat.conj().T) / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    assert gram[~np.eye(8, dtype=bool)].max() < 0.95  # no two coils alike


@pytest.mark.parametrize("kind", ["equispaced", "random"])
@pytest.mark.parametrize("acceleration", [4, 8])
def test_masks_sample_the_centre_and_reach_the_acceleration(kind, acceleration):
    width = 320
    fraction = realistic.CENTRE_FRACTION[acceleration]
    reached = []
    for seed in range(6):
        case_mask = realistic.MASKS[kind](width, acceleration, fraction, seed)
        centre = int(round(width * fraction))
        start = (width - centre + 1) // 2
        assert case_mask[start : start + centre].all()
        assert case_mask[width // 2] == 1  # k-space centre (DC after fftshift) measured
        reached.append(width / case_mask.sum())
    tolerance = 0.1 if kind == "equispaced" else 0.35  # random lines: Bernoulli draws, as fastMRI's
    assert all(abs(r - acceleration) / acceleration < tolerance for r in reached), reached
    if kind == "random":
        assert abs(np.mean(reached) - acceleration) / acceleration < 0.1


def test_simulated_kspace_keeps_the_measured_lines_and_the_stated_noise():
    n = 64
    truth = _disk(n, 0.5)
    case = realistic.simulate_mri("disk", truth, realistic.coil_maps(8, n), 4, "equispaced", 20.0, seed=1)
    assert case.kspace.shape == (8, n, n) and case.kspace.dtype == np.complex64
    measured = case.mask != 0
    assert not case.kspace[..., ~measured].any()
    np.testing.assert_array_equal(case.kspace[..., measured], case.full[..., measured])
    assert case.sigma == pytest.approx(truth[case.body].mean() / 20.0)
    outside = truth == 0
    coil_images = realistic.ifft2c(case.full)  # outside the object a coil image holds only the noise
    assert np.abs(coil_images[:, outside]).std() > 0
    assert np.sqrt(np.mean(np.abs(coil_images[:, outside]) ** 2)) == pytest.approx(case.sigma, rel=0.1)
    # zero-filled RSS of a fully sampled centre is close to the truth where the object is smooth
    assert realistic.scores(realistic.rss(coil_images), truth, case.body)["psnr_body"] > 25


def test_espirit_recovers_the_coil_maps_up_to_phase():
    n = 64
    truth = _disk(n, 0.7)
    maps = realistic.coil_maps(8, n)
    case = realistic.simulate_mri("disk", truth, maps, 4, "equispaced", 100.0, seed=0)
    estimate = realistic.espirit_maps(case.kspace, case.centre_lines)
    inner = np.abs((np.conj(estimate) * maps).sum(axis=0))
    assert inner[case.body].mean() > 0.9
    sense = realistic.sigpy_recon("SENSE", case.kspace, estimate, case.mask, 1e-3, 50)
    zero = realistic.rss(realistic.ifft2c(case.kspace))
    assert (realistic.scores(sense, truth, case.body)["psnr_body"]
            > realistic.scores(zero, truth, case.body)["psnr_body"] + 3)


def test_ct_geometry_matches_the_package_operator():
    n = 48
    check = realistic.geometry_check(_ct_slice(n), n, 90)
    assert check["sinogram_difference_aligned"] < 0.01
    assert check["sinogram_difference_misaligned"] > 2 * check["sinogram_difference_aligned"]
    assert check["fbp_psnr_skimage"] > 28 and check["fbp_psnr_operator"] > 28
    assert check["fbp_psnr_skimage"] > check["fbp_psnr_skimage_misaligned"] + 3
    assert abs(check["fbp_psnr_skimage"] - check["fbp_psnr_operator"]) < 3


def test_counts_add_poisson_noise_that_grows_as_the_dose_falls():
    n, views = 32, 30
    fine = realistic.hu_to_attenuation(_ct_slice(n))
    op = realistic.ct_operator(n, views)
    line = realistic.to_detector(realistic.fine_sinogram(fine, views), n, views, op.detectors)
    errors = {}
    for photons in (1e9, 1e5, 1e4):
        sino, counts = realistic.measure(line, photons, 1.0, np.random.default_rng(0))
        assert sino.shape == line.shape and counts.min() >= 1
        errors[photons] = float(np.std(sino - line))
    assert errors[1e9] < 0.05 * errors[1e5] and errors[1e5] < errors[1e4]


def test_weighted_tv_is_tv_reconstruct_with_unit_weights_and_ignores_rays_of_weight_zero():
    from baselines import tv_reconstruct

    n, views = 16, 12
    op = realistic.ct_operator(n, views)
    image = realistic.hu_to_attenuation(_ct_slice(n)).reshape(n, 2, n, 2).mean(axis=(1, 3))
    with torch.no_grad():
        y = op.forward(torch.from_numpy(image)[None, None])
    plain = tv_reconstruct(op, y, 0.01, 100, nonnegative=True)
    torch.testing.assert_close(realistic.tv_weighted(op, y, None, 0.01, 100), plain)
    torch.testing.assert_close(realistic.tv_weighted(op, y, torch.ones_like(y), 0.01, 100), plain)
    corrupted = y.clone()
    corrupted[..., 3, :] += 5.0  # one view ruined: weight 0 leaves it out
    w = torch.ones_like(y)
    w[..., 3, :] = 0.0
    clean = realistic.tv_weighted(op, y, w, 0.01, 300)
    # (the start, the back-projection, still sees the ruined view)
    torch.testing.assert_close(realistic.tv_weighted(op, corrupted, w, 0.01, 300), clean, atol=1e-3, rtol=0)
    assert float((realistic.tv_weighted(op, corrupted, None, 0.01, 300) - clean).abs().max()) > 0.1
    counts = np.full((views, op.detectors), 1e5)
    counts[:, :3] = 10.0
    counts[:, 3:6] = 30.0
    weights = realistic.count_weights(counts, 1e5, 2.0)
    assert weights[0, 0] == pytest.approx(10.0 * 0.04**2) and weights[0, -1] == pytest.approx(1e5 * 0.04**2)
    flat = realistic.count_weights(counts, 1e5, 2.0, weighted=False)
    assert np.all(flat == pytest.approx(20.0 * 0.04**2))  # the mean over the rays through the object
    out = realistic.tv_ct(op, y[0, 0].numpy(), weights, 0.01, 200, torch.device("cpu"))
    assert out.shape == (n, n) and out.min() >= 0


def test_pick_calibrates_on_calibration_images_only():
    def row(role, image, weight, psnr):
        return dict(setting="S", method="TV", role=role, image=image, weight=weight, psnr_body=psnr)

    grid = [row("calibration", "c1", 0.1, 30), row("calibration", "c1", 1.0, 20),
            row("calibration", "c2", 0.1, 28), row("calibration", "c2", 1.0, 29),
            row("test", "t", 0.1, 10), row("test", "t", 1.0, 40)]
    rows, chosen = realistic.pick(grid)
    assert chosen == {"S": {"TV": 0.1}}
    by_method = {r["method"]: r for r in rows}
    assert by_method["TV (calibrated)"]["weight"] == 0.1 and by_method["TV (calibrated)"]["psnr_body"] == 10
    assert by_method["TV (oracle)"]["weight"] == 1.0 and by_method["TV (oracle)"]["psnr_body"] == 40


def test_rail_counts_slices_below_the_baseline_and_scores_the_spread():
    rows = []
    for i, (ours, base, spread, flagged) in enumerate([(30, 25, 0.01, False), (20, 25, 0.05, True),
                                                       (28, 27, 0.02, True), (22, 24, 0.04, False)]):
        rows += [dict(setting="MRI 4x", image=str(i), method="zero-filled RSS", psnr_body=base),
                 dict(setting="MRI 4x", image=str(i), method="dd-medical", psnr_body=ours, spread_relative=spread,
                      flagged=flagged)]
        rows += [dict(setting="CT", image=str(i), method="FBP Hann", psnr_body=base),
                 dict(setting="CT", image=str(i), method="dd-medical", psnr_body=ours, spread_relative=None,
                      flagged=not flagged)]
    realistic.flag_below_baseline(rows)
    assert [r["below_baseline"] for r in rows if r["method"] == "dd-medical"] == [False] * 2 + [True] * 2 + [
        False] * 2 + [True] * 2
    mri, ct = realistic.rail(rows)
    assert len(mri) == len(realistic.RAIL_COLUMNS)
    (setting, n, below, flagged_below, flagged_others, _, _, auc, rho) = mri
    assert (setting, n, below, flagged_below, flagged_others, auc) == ("MRI 4x", 4, 2, "1/2", "1/2", "1.00")
    assert float(rho) < 0
    assert ct[:5] == ["CT", 4, 2, "1/2", "1/2"] and ct[5:] == ["", "", "", ""]  # one decoder: no spread


def test_grid_pool_gives_the_serial_results():
    n = 32
    case = realistic.simulate_mri("disk", _disk(n), realistic.coil_maps(4, n), 4, "equispaced", 30.0, seed=2)
    maps = realistic.espirit_maps(case.kspace, case.centre_lines)
    tasks = [(m, case.kspace, maps, case.mask, 1e-3, 10) for m in ("SENSE", "l1-wavelet", "TV")]
    with realistic._pool(2) as pool:
        parallel = list(pool.map(realistic._timed_recon, tasks))
    for (image, seconds), task in zip(parallel, tasks, strict=True):
        np.testing.assert_allclose(image, realistic.sigpy_recon(*task), rtol=0, atol=0)
        assert seconds > 0
