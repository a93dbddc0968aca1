from dataclasses import replace

import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner

import dd_medical
from dd_medical.cli import EXIT_FIDELITY, cli
from dd_medical.core.fit import FitConfig, fit
from dd_medical.core.operators import (
    FULL_WEIGHT_COUNTS,
    STARVED_COUNTS,
    SUBPIXELS,
    CartesianFourier,
    GaussianProjection,
    ParallelBeamRadon,
    equispaced_mask,
)
from dd_medical.errors import InputError
from dd_medical.io import read_volume, write_image
from dd_medical.io.raw import load_kspace, read_raw
from dd_medical.metrics import psnr
from dd_medical.phantom import write_phantom_series
from dd_medical.pipeline import reconstruct_volume
from dd_medical.presets import PRESETS, resolve
from dd_medical.simulation import simulate
from dd_medical.volume import Volume

CT_TV_WEIGHT = PRESETS["reconstruct/ct"]["default"].tv_weight

SMALL = FitConfig(channels=16, blocks=4, iterations=150, ensemble=1, stopping="fixed")


def phantom_hu(depth: int = 2, size: int = 48) -> np.ndarray:
    """Piecewise-constant HU slices: a body ellipse (40 HU) with a lesion (+160 HU) in air."""
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    body = (xx / (0.45 * size)) ** 2 + (yy / (0.35 * size)) ** 2 < 1
    lesion = (xx - 5) ** 2 + (yy + 3) ** 2 < 16
    hu = np.where(body, 40.0, -1000.0) + np.where(lesion, 160.0, 0.0)
    return np.repeat(hu[None], depth, axis=0).astype(np.float32)


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(psnr(image, reference, float(reference.max() - reference.min()))))


def default_config(operator, **overrides) -> FitConfig:
    """The reconstruction preset of ``operator``'s kind with ``overrides``."""
    return resolve("reconstruct/" + operator.kind, **overrides)


def test_sparse_view_ct_beats_fbp_and_keeps_the_attenuation_scale():
    sim = simulate(phantom_hu(1, 48), "ct", views=20)
    before = sim.measurements.clone()
    config = FitConfig(channels=32, blocks=4, iterations=300, ensemble=1, stopping="fixed")
    out = reconstruct_volume(sim.measurements, sim.operator, config, device="cpu", progress=False)
    assert out.shape == (1, 48, 48) and out.dtype == np.float32
    torch.testing.assert_close(sim.measurements, before)  # not modified
    fbp = sim.operator.to_image(sim.operator.fbp(sim.measurements)).numpy()
    assert _psnr(out, sim.reference) > _psnr(fbp, sim.reference) + 3
    body = sim.reference > 0.5
    assert abs(out[body].mean() / sim.reference[body].mean() - 1) < 0.05
    hu = sim.to_input_units(out)
    assert abs(np.median(hu[body]) - 40) < 60


def test_inpainting_half_the_pixels_missing():
    sim = simulate(phantom_hu(1, 32), "inpaint", missing=0.5, seed=1)
    out = reconstruct_volume(sim.measurements, sim.operator, SMALL, device="cpu", progress=False)
    masked = sim.measurements[:, 0].numpy()
    assert _psnr(out, sim.reference) > _psnr(masked, sim.reference) + 10


def test_mri_recovers_a_fully_sampled_multicoil_image_and_keeps_the_scale():
    hu = phantom_hu(depth=1, size=32)
    mu = torch.from_numpy((hu + 1000) / 1000)[:, None]  # (1, 1, H, W)
    ramp = torch.linspace(0.5, 1.0, 32)
    coils = torch.cat([mu * ramp, torch.zeros_like(mu), mu * ramp.flip(0), 0.3 * mu], dim=1)  # two complex coils
    full = CartesianFourier(np.ones(32), coils=2)
    assert full.output == "linear"  # the operator decides: signed coil images
    config = FitConfig(channels=16, blocks=4, iterations=150, ensemble=1, stopping="fixed")
    out = reconstruct_volume(full.forward(coils), full, config, device="cpu", progress=False, data_consistency=False)
    rss = full.to_image(coils).numpy()
    assert _psnr(out, rss) > 15
    # fully sampled: data consistency returns the measured image itself
    exact = reconstruct_volume(full.forward(coils), full, config, device="cpu", progress=False)
    np.testing.assert_allclose(exact, rss, atol=1e-4 * rss.max())

    op = CartesianFourier(equispaced_mask(32, 4, 0.1), coils=1)
    y = op.forward(torch.cat([mu, torch.zeros_like(mu)], dim=1))
    assert op.output == "linear"
    out4 = reconstruct_volume(y.numpy(), op, FitConfig(channels=8, blocks=3, iterations=50, ensemble=1,
                                                       stopping="fixed"),
                              device="cpu", progress=False)  # fitted linear: the operator's output
    assert out4.shape == (1, 32, 32) and np.isfinite(out4).all()
    assert 0.5 < out4.max() / float(mu.max()) < 2  # in the measurements' scale


def test_mri_of_a_real_object_fits_a_non_negative_image():
    hu = phantom_hu(depth=1, size=32)
    sim = simulate((hu + 1000) / 1000, "mri", modality="MR", acceleration=3, center_fraction=0.2, real_object=True)
    op = sim.operator
    assert op.real and op.image_shape(sim.measurements) == (1, 32, 32)
    config = default_config(op, channels=16, blocks=4, iterations=200)
    assert op.output == "sigmoid" and CartesianFourier(op.mask[0]).output == "linear"
    out = reconstruct_volume(sim.measurements, op, config, device="cpu", progress=False)
    zero_filled = op.to_image(op.baseline(sim.measurements)).numpy()
    assert out.shape == (1, 32, 32) and np.isfinite(out).all() and out.min() >= 0
    assert _psnr(out, sim.reference) > _psnr(zero_filled, sim.reference) + 3


CLI_FIT = ["--iterations", "10", "--channels", "8", "--blocks", "3", "--device", "cpu"]


def test_conv_decoder_reconstructs_mri_beyond_zero_filling():
    hu = phantom_hu(depth=1, size=32)
    sim = simulate((hu + 1000) / 1000, "mri", modality="MR", acceleration=3, center_fraction=0.2)
    # as on the benchmark's example_mr_sm slice, the 1x1 decoder is no better than zero filling here (measured:
    # zero-filled 18.4 dB, deep 18.6, conv 21.1)
    config = default_config(sim.operator, channels=16, blocks=4, iterations=400, architecture="conv")
    assert sim.operator.output == "linear"
    out = reconstruct_volume(sim.measurements, sim.operator, config, device="cpu", progress=False)
    deep = reconstruct_volume(sim.measurements, sim.operator, replace(config, architecture="deep"), device="cpu",
                              progress=False)
    zero_filled = sim.operator.to_image(sim.operator.baseline(sim.measurements)).numpy()
    assert out.shape == (1, 32, 32) and np.isfinite(out).all()
    assert _psnr(out, sim.reference) > _psnr(zero_filled, sim.reference) + 1.5
    assert _psnr(out, sim.reference) > _psnr(deep, sim.reference) + 1
    with pytest.raises(ValueError, match="architecture"):
        default_config(sim.operator, architecture="unet")


def test_auto_architecture_was_removed_with_a_clear_error(tmp_path):
    """architecture="auto" (keep the kind whose decoders disagree least) was removed: every door says so."""
    with pytest.raises(ValueError, match="auto.*'both'"):
        FitConfig(architecture="auto")
    with pytest.raises(InputError, match="auto.*'both'"):
        resolve("reconstruct/mri", architecture="auto")
    image = tmp_path / "slice.nii.gz"
    write_image(Volume(phantom_hu(1, 32) + 1000, modality="MR"), image)
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "out.nii.gz"), "--simulate", "mri",
                                      "--architecture", "auto", *CLI_FIT])
    assert result.exit_code == 2
    message = [line for line in result.output.splitlines() if "auto" in line]
    assert len(message) == 1 and "'both'" in message[0], result.output
    assert not (tmp_path / "out.nii.gz").exists()


def test_mri_both_averages_every_decoder_of_both_kinds(caplog):
    hu = phantom_hu(depth=2, size=32)
    sim = simulate((hu + 1000) / 1000, "mri", modality="MR", acceleration=3, center_fraction=0.2)
    op, y = sim.operator, sim.measurements
    assert PRESETS["reconstruct/mri"]["default"].architecture == "both"
    config = default_config(op, channels=16, blocks=4, iterations=60, ensemble=2)
    assert config.architecture == "both"
    with caplog.at_level("INFO", logger="dd_medical"):
        both = reconstruct_volume(y, op, config, device="cpu", progress=False)
    assert "'architecture': 'both'" in caplog.text
    # the mean of the 2 + 2 members, then data consistency, in the measurements' scale
    scale = float(op.to_image(op.baseline(y)).max())
    members = [fit(op, y / scale, replace(config, architecture=a), device="cpu", keep_members=True).members
               for a in ("deep", "conv")]

    def consistent(images: torch.Tensor) -> np.ndarray:
        return op.to_image(op.finalize(images, y / scale)).numpy() * scale

    expected = consistent(torch.cat(members, dim=1).mean(dim=1))
    np.testing.assert_allclose(both, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))
    for kind_members in members:  # neither kind's own result
        assert np.abs(consistent(kind_members.mean(dim=1)) - both).max() > 1e-3 * float(both.max())
    with pytest.raises(ValueError, match="both"):
        fit(op, y, replace(config, iterations=1))


def test_result_does_not_depend_on_batch_size():
    sim = simulate(phantom_hu(depth=3, size=24), "ct", views=8)
    config = FitConfig(channels=8, blocks=3, iterations=20, ensemble=1, stopping="fixed")
    one = reconstruct_volume(sim.measurements, sim.operator, config, device="cpu", progress=False, batch_size=1)
    three = reconstruct_volume(sim.measurements, sim.operator, config, device="cpu", progress=False, batch_size=3)
    np.testing.assert_allclose(one, three, atol=1e-4 * float(one.max()))


def test_bad_measurements_are_rejected_before_fitting():
    calls: list[float] = []
    run = lambda y, op: reconstruct_volume(y, op, SMALL, device="cpu", progress=calls.append)  # noqa: E731
    mri = CartesianFourier(equispaced_mask(32, 4, 0.08))
    with pytest.raises(InputError, match="does not match the mask"):
        run(np.zeros((2, 1, 32, 30, 2), np.float32), mri)
    ct = ParallelBeamRadon(np.linspace(0, 180, 10, endpoint=False), 32)
    with pytest.raises(InputError, match="complex"):
        run(np.ones((1, 10, ct.detectors), np.complex64), ct)
    with pytest.raises(InputError, match="views=10"):
        run(np.ones((1, 12, ct.detectors), np.float32), ct)
    bad = np.ones((1, 1, 10, ct.detectors), np.float32)
    bad[0, 0, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN/Inf"):
        run(bad, ct)
    with pytest.raises(InputError, match="all zero"):
        run(np.zeros((1, 1, 10, ct.detectors), np.float32), ct)
    # settings that do not go together with a reconstruction are refused before fitting, naming both
    sino = ct(torch.ones(1, 1, 32, 32))
    with pytest.raises(InputError, match="stopping='discrepancy'.*reconstruct/ct"):
        dd_medical.reconstruct(sino, ct, stopping="discrepancy", device="cpu", progress=calls.append)
    with pytest.raises(InputError, match="slab=3.*reconstruct/ct"):
        dd_medical.reconstruct(sino, ct, slab=3, device="cpu", progress=calls.append)
    assert calls == []


def test_complex_kspace_and_compressive_sensing_inputs():
    op = CartesianFourier(equispaced_mask(16, 2, 0.1), coils=1)
    kspace = np.fft.fftshift(np.fft.fft2(np.random.default_rng(0).normal(size=(3, 16, 16)))).astype(np.complex64)
    assert op.prepare(kspace).shape == (3, 1, 16, 16, 2)
    cs = GaussianProjection(200, (16, 16), seed=0)
    image = torch.from_numpy(phantom_hu(1, 16) + 1000)[:, None] / 1000
    out = reconstruct_volume(cs.forward(image), cs, FitConfig(channels=8, blocks=3, iterations=50, ensemble=1,
                                                              stopping="fixed"), device="cpu", progress=False)
    assert out.shape == (1, 16, 16)


def test_simulation_rejects_bad_parameters():
    hu = phantom_hu(1, 32)
    with pytest.raises(InputError, match="acceleration must be >= 1"):
        simulate(hu, "mri", acceleration=0.5)
    with pytest.raises(InputError, match="at least one view"):
        simulate(hu, "ct", views=0)
    with pytest.raises(InputError, match="negative"):
        simulate(hu, "mri", modality="MR")
    with pytest.raises(InputError, match="not a multiple of downsample 3"):
        simulate(hu, "ct", downsample=3)
    with pytest.raises(InputError, match="CT simulation only"):
        simulate(hu, "mri", downsample=2)
    with pytest.raises(InputError, match="whole number"):
        simulate(hu, "ct", downsample=1.5)
    with pytest.raises(InputError, match="CT simulation only"):
        simulate(hu, "mri", photons=1e4)
    with pytest.raises(InputError, match="CT images in HU"):
        simulate((hu + 1000) / 1000, "ct", modality="MR", photons=1e4)
    with pytest.raises(InputError, match="finite count >= 1"):
        simulate(hu, "ct", photons=float("nan"))
    with pytest.raises(InputError, match="positive size in mm"):
        simulate(hu, "ct", photons=1e4, pixel_mm=0)


def test_ct_simulation_counts_photons_like_a_scanner():
    hu = phantom_hu(2, 32)
    clean = simulate(hu, "ct", views=16, downsample=2)
    assert clean.counts is None
    sims = {p: simulate(hu, "ct", views=16, downsample=2, photons=p, pixel_mm=2.0, seed=3) for p in (1e5, 1e3)}
    again = simulate(hu, "ct", views=16, downsample=2, photons=1e3, pixel_mm=2.0, seed=3)
    assert torch.equal(again.measurements, sims[1e3].measurements)  # deterministic given the seed
    errors = {}
    for photons, sim in sims.items():
        assert sim.counts.shape == (2, 16, sim.operator.detectors) and sim.counts.min() >= 1
        np.testing.assert_array_equal(sim.reference, clean.reference)
        path = clean.measurements[:, 0].double().numpy() * 0.02 * 4.0  # mu_water 0.02/mm, 4 mm reconstruction pixels
        expected = photons * np.exp(-path)
        assert np.allclose(sim.counts, expected, rtol=0.2, atol=60)  # Poisson + 10 electronic counts about it
        errors[photons] = (sim.measurements - clean.measurements)[:, 0].numpy()
        through = expected < 0.95 * photons  # rays that cross the body: the noise is strongest where counts are few
        assert errors[photons][through].std() > errors[photons][~through].std()
    assert errors[1e3].std() > 5 * errors[1e5].std()  # 100 times fewer photons: about 10 times the noise


def test_ct_counts_weigh_only_the_rays_short_of_photons_and_leave_out_the_starved():
    op = ParallelBeamRadon(np.linspace(0, 180, 4, endpoint=False), 8)
    counts = np.full((4, op.detectors), 5e4, np.float32)
    counts[0, :4] = (1.0, 10.0, STARVED_COUNTS, 50.0)
    weights = op.with_counts(counts).ray_weights[0, 0].numpy() ** 2
    expected = np.where(counts >= STARVED_COUNTS, np.minimum(counts, FULL_WEIGHT_COUNTS), 0.0)
    np.testing.assert_allclose(weights, expected / expected.mean(), rtol=1e-6)
    assert weights[0, 0] == weights[0, 1] == 0 < weights[0, 2] < weights[0, 3] < weights[1, 0] == weights[3, -1]
    with pytest.raises(InputError, match="every ray of a slice detected fewer than 30 photons"):
        op.with_counts(np.stack([counts, np.full_like(counts, 5.0)]))
    with pytest.raises(InputError, match="non-negative"):
        op.with_counts(-counts)
    with pytest.raises(InputError, match="ray weights must be"):
        op.with_counts(counts[:, :-1])


def test_the_counts_give_ct_a_noise_floor_near_the_noise_alone():
    """The misfit a noise-free truth leaves in noisy data is the noise's: the floor from the counts is within 15% of
    it (3 mm pixels, no starved rays), for any scale of the measurements; without counts there is none."""
    hu = phantom_hu(2, 64)
    clean = simulate(hu, "ct", views=24, downsample=2).measurements
    assert simulate(hu, "ct", views=24, downsample=2).operator.noise_floor(clean) is None
    for photons in (1e4, 1e5):
        sim = simulate(hu, "ct", views=24, downsample=2, photons=photons, pixel_mm=3.0)
        op, y = sim.operator, sim.measurements / 3.7  # the pipeline fits measurements divided by FBP's maximum
        noise = (op.data_loss(clean / 3.7, y).double() / op.data_loss(torch.zeros_like(y), y).double()).sqrt()
        floor = op.noise_floor(y)
        assert floor.shape == (2,) and torch.allclose(floor, noise, rtol=0.15), (floor, noise)
        assert torch.allclose(op.noise_floor(sim.measurements), floor, rtol=1e-6)
        first = op.slices(0, 1)
        assert first.counts.shape[0] == 1 and torch.allclose(first.noise_floor(y[:1]), floor[:1], rtol=1e-6)


def test_a_low_dose_scan_reconstructed_with_its_counts_resists_starved_rays():
    """Long paths (6 mm pixels, 10,000 photons): 17% of the rays detect under 30 photons and their logarithms are
    biased. The simulation's operator weighs rays by their counts and leaves those out; every ray alike streaks
    (measured: 22.8 against 18.5 dB). With short paths (4 mm: none under 30 photons) the counts change little (30.1
    against 30.2 dB)."""
    config = default_config(ParallelBeamRadon([0.0], 4), channels=16, blocks=4, iterations=300)
    gains = []
    for pixel_mm in (6.0, 4.0):
        sim = simulate(phantom_hu(1, 64), "ct", views=24, downsample=2, photons=1e4, pixel_mm=pixel_mm)
        assert sim.operator.ray_weights is not None
        scores = [_psnr(reconstruct_volume(sim.measurements, op, config, device="cpu", progress=False), sim.reference)
                  for op in (sim.operator, sim.operator.with_ray_weights(None))]
        gains.append(scores[0] - scores[1])
    assert gains[0] > 2 and abs(gains[1]) < 0.5


def test_ct_simulation_from_a_finer_grid_avoids_the_inverse_crime():
    fine = phantom_hu(2, 64)
    sim = simulate(fine, "ct", views=24, downsample=2)
    assert (sim.operator.height, sim.operator.width, sim.operator.subpixels) == (32, 32, SUBPIXELS)
    mu = (np.maximum(fine + 1000, 0) / 1000).reshape(2, 32, 2, 32, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(sim.reference, mu, rtol=1e-5, atol=1e-6)  # the block average of the fine image
    same = sim.operator.forward(torch.from_numpy(sim.reference)[:, None])  # what the coarse model predicts
    assert sim.measurements.shape == same.shape
    # the same object and mass (bins summed in groups of s, / s^2), but not the reconstruction's own discretisation
    np.testing.assert_allclose(sim.measurements.sum(dim=(-1, -2)), same.sum(dim=(-1, -2)), rtol=1e-4)
    relative = float((sim.measurements - same).norm() / same.norm())
    assert 1e-4 < relative < 0.05


def test_ct_default_tv_penalty_helps_without_the_inverse_crime():
    sim = simulate(phantom_hu(1, 64), "ct", views=24, downsample=2)  # scanned at 64 px, reconstructed at 32
    config = default_config(sim.operator, channels=32, blocks=4, iterations=300)
    assert config.tv_weight == CT_TV_WEIGHT > 0
    run = lambda c: reconstruct_volume(sim.measurements, sim.operator, c, device="cpu", progress=False)  # noqa: E731
    with_tv, without = run(config), run(replace(config, tv_weight=0.0))
    fbp = sim.operator.to_image(sim.operator.fbp(sim.measurements)).numpy()
    assert _psnr(without, sim.reference) > _psnr(fbp, sim.reference) + 3
    assert _psnr(with_tv, sim.reference) > _psnr(without, sim.reference) + 0.5  # measured: +1.0 dB


def test_cli_reconstructs_fastmri_hdf5_kspace(tmp_path):
    h5py = pytest.importorskip("h5py")
    image = (phantom_hu(2, 32) + 1000) / 1000
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    mask = equispaced_mask(32, 4, 0.1)
    kspace = (kspace * mask)[:, None].astype(np.complex64)  # (slices, coils, H, W), zero-filled
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace
    loaded, file_mask = load_kspace(path)
    assert loaded.shape == (2, 1, 32, 32) and file_mask is None
    out = tmp_path / "recon.nii.gz"
    result = CliRunner().invoke(cli, ["reconstruct", str(path), str(out), *CLI_FIT])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output  # 3: a tiny fit may be flagged
    volume = read_volume(out)
    assert volume.shape == (2, 32, 32) and np.isfinite(volume.array).all() and volume.array.max() > 0.3

    np.save(tmp_path / "kspace.npy", kspace)
    np.save(tmp_path / "mask.npy", mask[:30])
    bad = CliRunner().invoke(cli, ["reconstruct", str(tmp_path / "kspace.npy"), str(tmp_path / "x.nii.gz"),
                                   "--mask", str(tmp_path / "mask.npy"), *CLI_FIT])
    assert bad.exit_code == 2 and "does not match the mask" in bad.output


def test_cli_simulates_ct_from_a_dicom_series_and_writes_a_derived_series(tmp_path):
    series = tmp_path / "series"
    write_phantom_series(series, depth=2, size=32)
    out = tmp_path / "recon"
    result = CliRunner().invoke(cli, ["reconstruct", str(series), str(out), "--simulate", "ct", "--views", "16",
                                      *CLI_FIT])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output  # 3: a tiny fit may be flagged
    assert "PSNR" in result.output and "baseline" in result.output
    recon = read_volume(out)
    assert recon.shape == (2, 32, 32) and recon.modality == "CT"
    assert recon.array.min() > -1500 and recon.array.max() < 3000  # HU, not attenuation
    (first, *_) = sorted(out.rglob("*.dcm"))
    assert f"TV weight={CT_TV_WEIGHT:g}" in pydicom.dcmread(first).DerivationDescription


def test_cli_simulates_a_low_dose_ct_scan_and_refuses_photons_elsewhere(tmp_path):
    series = tmp_path / "series"
    write_phantom_series(series, depth=1, size=32)
    result = CliRunner().invoke(cli, ["reconstruct", str(series), str(tmp_path / "a.nii.gz"), "--simulate", "ct",
                                      "--views", "16", "--photons", "1e4", *CLI_FIT])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output
    assert read_volume(tmp_path / "a.nii.gz").shape == (1, 32, 32)
    result = CliRunner().invoke(cli, ["reconstruct", str(series), str(tmp_path / "b.nii.gz"), "--simulate", "mri",
                                      "--photons", "1e4", *CLI_FIT])
    assert result.exit_code == 2 and "--photons applies to --simulate ct" in result.output


def test_cli_conv_decoder_is_recorded_in_the_derived_series(tmp_path):
    series = tmp_path / "series"
    write_phantom_series(series, depth=1, size=32)
    out = tmp_path / "recon"
    result = CliRunner().invoke(cli, ["reconstruct", str(series), str(out), "--simulate", "ct", "--views", "16",
                                      "--architecture", "conv", "--tv-weight", "0", *CLI_FIT])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output  # 3: a tiny fit may be flagged
    assert "(decoder: conv)" in result.output
    (dicom_file,) = sorted(out.rglob("*.dcm"))
    description = pydicom.dcmread(dicom_file).DerivationDescription
    assert "ConvDecoder" in description and "TV weight" not in description


def test_cli_simulates_mri_of_a_real_object(tmp_path):
    image = tmp_path / "slice.nii.gz"
    write_image(Volume(phantom_hu(1, 32) + 1000, modality="MR"), image)
    out = tmp_path / "recon.nii.gz"
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(out), "--simulate", "mri", "--acceleration", "3",
                                      "--real-object", *CLI_FIT])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output  # 3: a tiny fit may be flagged
    assert "PSNR" in result.output and read_volume(out).shape == (1, 32, 32)


def test_a_raw_sinogram_is_weighted_by_its_counts_file(tmp_path):
    sim = simulate(phantom_hu(2, 32), "ct", views=16, photons=1e4, pixel_mm=3.0)
    np.save(tmp_path / "sino.npy", sim.measurements[:, 0].numpy())
    np.save(tmp_path / "counts.npy", sim.counts)
    np.save(tmp_path / "one.npy", sim.counts[0])
    _, plain, _ = read_raw(tmp_path / "sino.npy", image_size=32)
    assert plain.ray_weights is None
    _, weighted, _ = read_raw(tmp_path / "sino.npy", image_size=32, counts_path=tmp_path / "counts.npy")
    torch.testing.assert_close(weighted.ray_weights, sim.operator.ray_weights)
    _, shared, _ = read_raw(tmp_path / "sino.npy", image_size=32, counts_path=tmp_path / "one.npy")
    assert shared.ray_weights.shape[0] == 1
    np.save(tmp_path / "short.npy", sim.counts[:, :, :-1])
    with pytest.raises(InputError, match="short.npy.*counts must be real, of the sinogram's shape"):
        read_raw(tmp_path / "sino.npy", image_size=32, counts_path=tmp_path / "short.npy")
    np.save(tmp_path / "negative.npy", -sim.counts)
    with pytest.raises(InputError, match="negative.npy.*non-negative"):
        read_raw(tmp_path / "sino.npy", image_size=32, counts_path=tmp_path / "negative.npy")
    image = tmp_path / "slice.nii.gz"
    write_image(Volume(phantom_hu(1, 32), modality="CT"), image)
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "x.nii.gz"), "--simulate", "ct",
                                      "--counts", str(tmp_path / "counts.npy"), *CLI_FIT])
    assert result.exit_code == 2 and "--counts applies to a raw sinogram" in result.output


def test_cli_rejects_bad_simulation_settings_and_raw_sinograms(tmp_path):
    image = tmp_path / "slice.nii.gz"
    write_image(Volume(phantom_hu(1, 32), modality="CT"), image)
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "a.nii.gz"), "--simulate", "mri",
                                      "--acceleration", "0.5", *CLI_FIT])
    assert result.exit_code == 2 and "acceleration must be >= 1" in result.output
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "b.nii.gz"), "--simulate", "ct",
                                      "--views", "0", *CLI_FIT])
    assert result.exit_code == 2 and "at least one view" in result.output
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "c.nii.gz"), *CLI_FIT])
    assert result.exit_code == 2 and "--simulate" in result.output
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "e.nii.gz"), "--simulate", "ct",
                                      "--slab", "3", *CLI_FIT])
    assert result.exit_code == 2 and "No such option '--slab'" in result.output  # denoising only: not offered
    assert not (tmp_path / "e.nii.gz").exists()

    op = ParallelBeamRadon(np.linspace(0, 180, 16, endpoint=False), 32)
    sino = op.forward(torch.from_numpy((phantom_hu(1, 32) + 1000) / 1000)[:, None])[:, 0].numpy()
    np.save(tmp_path / "sino.npy", sino)
    result = CliRunner().invoke(cli, ["reconstruct", str(tmp_path / "sino.npy"), str(tmp_path / "s.nii.gz"),
                                      "--image-size", "32", *CLI_FIT])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output  # 3: a tiny fit may be flagged
    assert read_volume(tmp_path / "s.nii.gz").shape == (1, 32, 32)
    np.save(tmp_path / "complex.npy", sino.astype(np.complex64)[..., :3])  # neither k-space nor sinogram
    result = CliRunner().invoke(cli, ["reconstruct", str(tmp_path / "complex.npy"), str(tmp_path / "d.nii.gz"),
                                      *CLI_FIT])
    assert result.exit_code == 2
