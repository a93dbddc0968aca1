"""The safety rail of reconstruction (issue 32): every reconstruction reports its data misfit and its decoders'
disagreement where nothing was measured, and flags a slice that may be worse than the cheap baseline, in the API
(``report=``), the command line's summary and exit code, and the DICOM DerivationDescription."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner

import dd_medical
from dd_medical.cli import EXIT_FIDELITY, cli
from dd_medical.core import reconstruction_check as rc
from dd_medical.core.config import FitConfig
from dd_medical.core.operators import CartesianFourier, ParallelBeamRadon, PixelMask, equispaced_mask
from dd_medical.core.reconstruction_check import (
    MAX_DISAGREEMENT,
    MAX_MISFIT,
    ReconstructionCheck,
    SliceReconstructionCheck,
    check_reconstruction,
)
from dd_medical.io import read_volume, write_image
from dd_medical.io.provenance import with_check
from dd_medical.pipeline import reconstruct_volume
from dd_medical.volume import Volume

TINY = FitConfig(channels=8, blocks=3, iterations=10, ensemble=2, stopping="fixed", amp=False, architecture="both")


def _image(size: int = 24, depth: int = 1) -> np.ndarray:
    """Smooth non-negative slices ``(D, size, size)``: an ellipse with a brighter insert, in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = ((xx / 0.4) ** 2 + (yy / 0.3) ** 2 < 1) * 0.6 + ((xx - 0.1) ** 2 + yy**2 < 0.01) * 0.4
    return np.stack([np.roll(body, k, axis=1) for k in range(depth)]).astype(np.float32)


def _coil_images(size: int = 16, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Random complex coil images ``(B, 2, H, W)`` (one coil, real and imaginary channels)."""
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 2, size, size)).astype(np.float32))


def _in_kspace(op: CartesianFourier, kspace: torch.Tensor) -> torch.Tensor:
    """The coil images ``(B, 2, H, W)`` whose k-space is ``kspace`` ``(B, 1, H, W, 2)``."""
    from dd_medical.core.operators.mri import ifft2c

    images = ifft2c(kspace)  # (B, 1, H, W, 2)
    return images.permute(0, 1, 4, 2, 3).reshape(kspace.shape[0], 2, *kspace.shape[2:4])


# ---- the figures --------------------------------------------------------------------------------------------------

def test_a_perfect_fit_has_no_misfit_and_agreeing_members_no_disagreement():
    op = CartesianFourier(equispaced_mask(16, 4, 0.125))
    x = _coil_images(batch=2)
    report = check_reconstruction(op, op(x), x, x[:, None].repeat(1, 3, 1, 1, 1))
    assert [s.index for s in report.slices] == [0, 1] and report.decoders == 3
    assert report.misfit < 1e-6 and report.disagreement < 1e-3 and not report.unreliable
    ct = ParallelBeamRadon(np.linspace(0, 180, 12, endpoint=False), 16)
    image = torch.from_numpy(_image(16))[:, None]
    single = check_reconstruction(ct, ct(image), image)
    assert single.misfit < 1e-5 and single.disagreement is None and single.slices[0].disagreement is None
    assert "one decoder per slice" in single.summary() and "passed" in single.summary()


def test_the_misfit_is_the_unexplained_fraction_of_the_measurements():
    op = CartesianFourier(equispaced_mask(16, 4, 0.125))
    x = _coil_images()
    report = check_reconstruction(op, op(x), 0.8 * x)  # 20% of every measured sample left unexplained
    assert report.misfit == pytest.approx(0.2, rel=1e-4)
    # white coil images have white k-space: to the noise estimate it is all noise, and nothing is in excess of it
    assert report.slices[0].noise_floor > 0.5 and not report.unreliable
    smooth = torch.cat([torch.from_numpy(_image(16))[:, None], torch.zeros(1, 1, 16, 16)], dim=1)
    report = check_reconstruction(op, op(smooth), 0.8 * smooth)
    assert report.misfit == pytest.approx(0.2, rel=1e-4) and report.slices[0].noise_floor < 0.15
    assert report.unreliable == (report.excess > MAX_MISFIT) and report.unreliable


def test_the_misfit_counts_only_its_excess_over_the_noise_of_the_kspace():
    from dd_medical.core.operators.mri import kspace_noise_floor

    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(_image(64, depth=2))[:, None], 5, 1, 2)[:, 0]
    sim = dd_medical.simulate(smooth.numpy(), "mri", modality="MR", acceleration=4)
    y, op = sim.measurements.double(), sim.operator
    measured = (op.mask != 0).expand(64, 64)[..., None]
    for sigma in (0.02, 0.1):
        noise = sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        noisy = y + noise * measured
        truth = (noise * measured).flatten(1).norm(dim=1) / noisy.flatten(1).norm(dim=1)
        assert torch.allclose(kspace_noise_floor(noisy, op.mask), truth, rtol=0.25)
    assert float(kspace_noise_floor(y, op.mask).max()) < 0.02  # a smooth image's highest frequencies are small
    # a good fit of noisy k-space leaves the noise: within the noise it passes, the same misfit without it fails
    noisy_fit = SliceReconstructionCheck(0, 1.2 * MAX_MISFIT, 0.5, noise_floor=MAX_MISFIT)
    assert noisy_fit.excess == pytest.approx(MAX_MISFIT * (1.2**2 - 1) ** 0.5) and not noisy_fit.unreliable
    assert SliceReconstructionCheck(0, 1.2 * MAX_MISFIT, 0.5).unreliable
    text = ReconstructionCheck((noisy_fit,), 4, "zero-filled").summary()
    assert "beyond the noise's" in text and "passed" in text


def test_the_disagreement_is_measured_where_the_mask_measured_nothing():
    op = CartesianFourier(equispaced_mask(16, 4, 0.125))
    x = _coil_images()
    k = op._kspace(x)
    noise = torch.from_numpy(np.random.default_rng(1).normal(size=k.shape).astype(np.float32))
    sampled = (op.mask != 0).float()[..., None]
    on_mask, off_mask = _in_kspace(op, noise * sampled), _in_kspace(op, noise * (1 - sampled))
    # members that differ only where k-space was measured agree on everything the measurements leave open
    measured = torch.stack([x + on_mask, x - on_mask], dim=1)
    assert check_reconstruction(op, op(x), x, measured).disagreement < 1e-3
    unmeasured = torch.stack([x + 0.1 * off_mask, x - 0.1 * off_mask], dim=1)
    size = float(op.unmeasured(x).pow(2).mean().sqrt())
    spread = 0.1 * np.sqrt(2) * float(op.unmeasured(off_mask).pow(2).mean().sqrt())  # sample SD of +-d
    assert check_reconstruction(op, op(x), x, unmeasured).disagreement == pytest.approx(spread / size, rel=1e-3)


def test_without_an_override_the_disagreement_is_the_members_image_spread():
    op = PixelMask(np.ones((16, 16)))
    x = torch.from_numpy(_image(16))[:, None]
    members = torch.stack([1.1 * x, 0.9 * x], dim=1)  # SD sqrt(2) * 0.1 * |x| per pixel
    report = check_reconstruction(op, op(x), x, members)
    assert report.disagreement == pytest.approx(0.1 * np.sqrt(2), rel=1e-4)
    assert report.misfit < 1e-6


def test_a_wrong_forward_model_or_a_short_fit_is_flagged():
    x = _coil_images()
    truth = CartesianFourier(equispaced_mask(16, 4, 0.125, seed=0))
    other = CartesianFourier(np.roll(truth.mask[0].numpy(), 1))  # the sampled lines one column off
    wrong = check_reconstruction(other, truth(x), x)
    assert wrong.misfit > 0.5 and wrong.unreliable
    sim = dd_medical.simulate(_image(24, depth=2), "mri", modality="MR", acceleration=4)
    _, short = reconstruct_volume(sim.measurements, sim.operator, replace(TINY, iterations=3),
                                  device="cpu", progress=False, check=True)
    assert short.unreliable and [s.index for s in short.flagged] == [0, 1]
    assert all(s.misfit > MAX_MISFIT or s.disagreement > MAX_DISAGREEMENT for s in short.slices)


def test_the_summary_says_what_the_figures_are_and_which_way_is_bad():
    good = ReconstructionCheck((SliceReconstructionCheck(0, 0.01, 0.1),), 4, "zero-filled")
    assert good.summary().startswith("reconstruction check passed (data misfit up to 1.0% of the measurements")
    assert "higher is worse" in good.summary() and good.as_record()["unreliable"] is False
    bad = ReconstructionCheck(tuple(SliceReconstructionCheck(i, 10 * MAX_MISFIT, 0.0) for i in range(10)), 4,
                              "zero-filled")
    text = bad.summary()
    assert "FLAGGED 10 of 10 slice(s) (0, 1, 2, 3, 4, 5, 6, 7, ...)" in text
    assert "worse than the zero-filled baseline" in text and "higher is worse" in text
    assert bad.as_record()["flagged_slices"] == list(range(10))
    blank = ReconstructionCheck((SliceReconstructionCheck(3, float("inf"), None),), 1, "FBP")
    assert blank.unreliable and "where nothing was measured" in blank.summary()


# ---- the pipeline and the API -------------------------------------------------------------------------------------

def test_the_check_changes_no_result_and_streams_what_the_members_give():
    sim = dd_medical.simulate(_image(24, depth=2), "mri", modality="MR", acceleration=3, center_fraction=0.2)
    run = lambda **kw: reconstruct_volume(sim.measurements, sim.operator, TINY, device="cpu",  # noqa: E731
                                          progress=False, **kw)
    plain = run()
    image, streamed = run(check=True)
    (both, sd), kept = run(check=True, uncertainty=True)
    np.testing.assert_array_equal(image, plain)
    np.testing.assert_array_equal(both, plain)
    assert streamed.decoders == kept.decoders == 4
    for a, b in zip(streamed.slices, kept.slices, strict=True):
        assert a.misfit == pytest.approx(b.misfit, rel=1e-6)
        assert a.disagreement == pytest.approx(b.disagreement, rel=1e-3)
        assert a.disagreement > 0


def test_api_report_returns_the_result_and_the_check():
    sim = dd_medical.simulate(_image(24, depth=2), "ct", views=10)
    config = FitConfig(channels=8, blocks=3, iterations=5, ensemble=1, stopping="fixed", amp=False)
    plain = dd_medical.reconstruct(sim.measurements, sim.operator, config=config, device="cpu", progress=False)
    image, check = dd_medical.reconstruct(sim.measurements, sim.operator, config=config, device="cpu",
                                          progress=False, report=True)
    assert isinstance(plain, np.ndarray) and isinstance(check, ReconstructionCheck)
    np.testing.assert_array_equal(image, plain)
    assert len(check.slices) == 2 and check.decoders == 1 and check.disagreement is None
    assert check.baseline == "filtered back-projection"
    (image, sd), check = dd_medical.reconstruct(sim.measurements, sim.operator, config=config, ensemble=2,
                                                device="cpu", progress=False, uncertainty=True, report=True)
    assert image.shape == sd.shape == (2, 24, 24) and check.decoders == 2 and check.disagreement is not None


# ---- the command line and the DICOM provenance --------------------------------------------------------------------

CLI_TINY = ["--iterations", "5", "--channels", "8", "--blocks", "3", "--device", "cpu"]


@pytest.fixture()
def mr_image(tmp_path):
    path = tmp_path / "mr.nii.gz"
    write_image(Volume(_image(32) * 400 + 20, modality="MR"), path)
    return path


def test_cli_flags_an_unreliable_reconstruction_warns_and_exits_3_with_the_output_written(mr_image, tmp_path,
                                                                                           caplog):
    out = tmp_path / "out.nii.gz"
    with caplog.at_level(logging.WARNING, logger="dd_medical"):
        result = CliRunner().invoke(cli, ["reconstruct", str(mr_image), str(out), "--simulate", "mri", *CLI_TINY])
    assert result.exit_code == EXIT_FIDELITY, result.output
    (line,) = [s for s in result.stdout.splitlines() if s.startswith("reconstruction check")]
    assert "FLAGGED 1 of 1 slice(s) (0)" in line and "data misfit up to" in line and "disagreement" in line
    assert "higher is worse" in line and "zero-filled baseline" in line
    assert read_volume(out).shape == (1, 32, 32)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "worse than the zero-filled baseline on 1 of 1 slice(s)" in record.getMessage()


def test_cli_passes_a_reconstruction_within_the_limits(mr_image, tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "MAX_MISFIT", 100.0)
    monkeypatch.setattr(rc, "MAX_DISAGREEMENT", 100.0)
    result = CliRunner().invoke(cli, ["reconstruct", str(mr_image), str(tmp_path / "out.nii.gz"), "--simulate",
                                      "mri", *CLI_TINY])
    assert result.exit_code == 0, result.output
    assert "reconstruction check passed (data misfit up to" in result.stdout


def test_the_dicom_derivation_description_carries_the_check(mr_image, tmp_path):
    out = tmp_path / "dicom"
    result = CliRunner().invoke(cli, ["reconstruct", str(mr_image), str(out), "--simulate", "mri", *CLI_TINY])
    assert result.exit_code == EXIT_FIDELITY, result.output
    (first,) = sorted(out.rglob("*.dcm"))
    description = pydicom.dcmread(first).DerivationDescription
    assert "reconstruction (mri)" in description and "reconstruction check FLAGGED 1 of 1 slice(s)" in description
    assert len(description) <= 1024


def test_a_long_provenance_is_shortened_never_the_check():
    check = "reconstruction check FLAGGED 1 of 1 slice(s) (0) as unreliable"
    text = with_check("k=64, " * 300, check)
    assert len(text) == 1024 and text.endswith("...; " + check)
    assert with_check("short", check) == f"short; {check}"
