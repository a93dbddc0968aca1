"""The SENSE-style multi-coil MRI model: one complex object per slice, coils through their sensitivities."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dd_medical import presets, reconstruct
from dd_medical.core.operators import CartesianFourier, equispaced_mask
from dd_medical.core.operators.mri import fft2c
from dd_medical.core.operators.sense import (
    SensitivityFourier,
    centre_lines,
    espirit_sensitivities,
)
from dd_medical.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realistic  # noqa: E402


def _maps(slices: int, coils: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (slices, coils, h, w)
    return torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


def test_adjoint_is_the_adjoint_with_per_slice_maps_and_repeated_members():
    mask = equispaced_mask(20, 4, 0.16, seed=0)
    op = SensitivityFourier(mask, _maps(2, 3, 16, 20))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 16, 20, generator=gen)  # 2 slices x 3 members, each slice's rows consecutive
    y = torch.randn(6, 3, 16, 20, 2, generator=gen) * op.mask[..., None]
    lhs = float((op(x).double() * y.double()).sum())
    rhs = float((x.double() * op.adjoint(y).double()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4)
    # the rows of slice 1 see slice 1's maps: the same as the model of slice 1 alone
    torch.testing.assert_close(op(x)[3:], op.slices(1, 2)(x[3:]))
    assert not torch.allclose(op(x)[3:], op.slices(0, 1)(x[3:]))
    shared = SensitivityFourier(mask, _maps(1, 3, 16, 20)[0])  # (coils, H, W): one set for every slice
    assert shared.slices(3, 5) is shared


def test_forward_is_each_coil_image_through_monais_centred_fft():
    maps = _maps(1, 2, 12, 16)
    op = SensitivityFourier(torch.ones(16), maps)  # fully sampled
    x = torch.randn(1, 2, 12, 16)
    coil = maps[0] * torch.complex(x[0, 0], x[0, 1])
    expected = fft2c(torch.view_as_real(coil)[None])
    torch.testing.assert_close(op(x), expected)
    # with sensitivities of root-sum-of-squares 1 the magnitude is the object's
    unit = maps / maps.abs().pow(2).sum(dim=1, keepdim=True).sqrt()
    op = SensitivityFourier(torch.ones(16), unit)
    torch.testing.assert_close(op.baseline(op(x))[:, 0], torch.complex(x[:, 0], x[:, 1]).abs(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op.to_image(op.adjoint(op(x))), torch.complex(x[:, 0], x[:, 1]).abs(), atol=1e-5,
                               rtol=1e-5)


def test_finalize_keeps_the_measured_samples_of_every_coil():
    mask = equispaced_mask(16, 4, 0.2, seed=2)
    op = SensitivityFourier(mask, _maps(1, 3, 12, 16))
    y = op(torch.randn(1, 2, 12, 16))
    merged = op.finalize(torch.randn(1, 2, 12, 16), y)  # another object: its k-space only where nothing was measured
    assert merged.shape == (1, 3, 12, 16) and merged.is_complex()
    kspace = fft2c(torch.view_as_real(merged))
    sampled = op.mask[0] != 0
    torch.testing.assert_close(kspace[..., sampled, :], y[..., sampled, :], atol=1e-5, rtol=1e-5)


def test_bad_maps_and_shapes_are_refused_in_one_line():
    mask = equispaced_mask(16, 4, 0.2)
    with pytest.raises(InputError, match="complex"):
        SensitivityFourier(mask, np.ones((2, 8, 16), dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        SensitivityFourier(mask, np.full((2, 8, 16), np.nan, dtype=np.complex64))
    op = SensitivityFourier(mask, _maps(2, 2, 8, 16))
    with pytest.raises(InputError, match="coils=2"):
        op.prepare(np.zeros((2, 3, 8, 16), dtype=np.complex64))
    with pytest.raises(InputError, match="3 slices of k-space but coil sensitivities for 2"):
        op.prepare(np.ones((3, 2, 8, 16), dtype=np.complex64))
    with pytest.raises(InputError, match="does not sample the centre"):
        centre_lines(np.array([1, 0, 0, 0, 0, 0, 0, 1.0]))
    assert centre_lines(np.array([0, 1, 0, 1, 1, 1, 0, 1.0])) == (3, 6)


def _case(n=64, coils=8, snr=100.0, seed=0):
    y, x = np.mgrid[:n, :n] / n - 0.5
    truth = ((x**2 / 0.35**2 + y**2 / 0.28**2) < 1).astype(np.float32) * 0.8
    truth[(x - 0.1) ** 2 + y**2 < 0.01] = 0.4
    maps = realistic.coil_maps(coils, n)
    return realistic.simulate_mri("ellipse", truth, maps, 4, "equispaced", snr, seed=seed), maps


def test_espirit_sensitivities_recover_the_coil_maps_up_to_phase():
    case, maps = _case()
    estimate = espirit_sensitivities(case.kspace[None], case.mask)[0]
    assert estimate.shape == maps.shape
    inner = np.abs((np.conj(estimate) * maps).sum(axis=0))  # 1 where the estimate is the truth up to phase
    assert inner[case.body].mean() > 0.9
    norm = np.sqrt((np.abs(estimate) ** 2).sum(axis=0))
    assert np.median(norm[case.body]) == pytest.approx(1.0, abs=0.02)
    narrow = np.zeros(64, dtype=np.float32)
    narrow[31:33] = 1
    with pytest.raises(InputError, match="fully sampled centre of k-space has 2 lines"):
        espirit_sensitivities(case.kspace[None], narrow)


def test_the_sense_fit_unfolds_where_the_coil_image_fit_does_not():
    """4x equispaced, 8 coils, 48 px: one decoder, a short fit. With the coils' sensitivities the decoder's image is
    above zero-filled, and well above the same decoder fitting every coil image (the model before SENSE)."""
    case, maps = _case(n=48, coils=8, seed=1)
    kspace = torch.from_numpy(case.kspace[None])
    config = presets.resolve("reconstruct/mri", iterations=250, architecture="deep", ensemble=1, channels=32,
                             blocks=4)
    zero = realistic.rss(realistic.ifft2c(case.kspace))
    sense = reconstruct(kspace, SensitivityFourier(case.mask, espirit_sensitivities(kspace, case.mask)),
                        config=config, device="cpu", progress=False)[0]
    coil = reconstruct(kspace, CartesianFourier(case.mask, coils=8), config=config, device="cpu", progress=False)[0]
    psnr = {name: realistic.scores(image, case.truth, case.body)["psnr_body"]
            for name, image in (("zero", zero), ("sense", sense), ("coil", coil))}
    assert psnr["sense"] > psnr["zero"] + 1, psnr
    assert psnr["sense"] > psnr["coil"] + 2, psnr


def test_every_door_models_multi_coil_kspace_with_coil_sensitivities(tmp_path, caplog):
    """read_raw, the MONAI transform and kspace_model choose the same model: SENSE with ESPIRiT maps for several
    coils with a fully sampled centre; the coil-image model for one coil, on request, or without a centre (said)."""
    from monai.data import MetaTensor

    from dd_medical.core.operators.sense import kspace_model
    from dd_medical.io.raw import read_raw
    from dd_medical.transforms import DeepDecoderReconstruct

    case, _ = _case(n=48, coils=4, seed=2)
    kspace = case.kspace[None]  # (1, 4, 48, 48)
    assert isinstance(kspace_model(kspace, case.mask), SensitivityFourier)
    assert isinstance(kspace_model(kspace, case.mask, "none"), CartesianFourier)
    assert isinstance(kspace_model(kspace[:, :1], case.mask), CartesianFourier)
    no_centre = case.mask.copy()
    no_centre[len(no_centre) // 2] = 0
    with caplog.at_level("WARNING"):
        assert isinstance(kspace_model(kspace * no_centre, no_centre), CartesianFourier)
    assert "centre line" in caplog.text
    with pytest.raises(InputError, match="unknown coil_maps"):
        kspace_model(kspace, case.mask, "walsh")

    path = tmp_path / "scan.npy"
    np.save(path, kspace)
    np.save(tmp_path / "mask.npy", case.mask)
    _, operator, _ = read_raw(path, mask_path=tmp_path / "mask.npy")
    assert isinstance(operator, SensitivityFourier) and operator.kind == "sense"

    layout = np.stack([kspace[0].real, kspace[0].imag], axis=-1).astype(np.float32)  # MONAI's (C, H, W, 2)
    out = DeepDecoderReconstruct(mask=case.mask, iterations=3, channels=8, device="cpu")(MetaTensor(layout))
    assert out.shape == (1, 48, 48) and torch.isfinite(out.as_tensor()).all()
    record = out.meta["dd_medical"]
    assert record["coils"] == 4 and "reconstruction (sense)" in record["description"]
    assert isinstance(record["check_passed"], bool) and record["check"].startswith("reconstruction check")
    with pytest.raises(InputError, match="unknown coil_maps"):
        DeepDecoderReconstruct(coil_maps="walsh")


def test_per_slice_sensitivities_give_the_same_volume_whatever_the_batch_and_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from dd_medical.cli import EXIT_FIDELITY, cli
    from dd_medical.io import read_volume

    cases = [_case(n=48, coils=4, seed=s)[0] for s in (3, 4)]
    mask = cases[0].mask
    kspace = np.stack([c.full * mask for c in cases])  # (2, 4, 48, 48), one mask for both slices
    maps = espirit_sensitivities(kspace, mask)
    assert not np.allclose(maps[0], maps[1])  # each slice its own phase, so its own maps
    op = SensitivityFourier(mask, maps)
    config = presets.resolve("reconstruct/sense", iterations=4, channels=8, blocks=3, ensemble=2)
    one = reconstruct(kspace, op, config=config, device="cpu", progress=False, batch_size=1)
    two = reconstruct(kspace, op, config=config, device="cpu", progress=False, batch_size=2)
    np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-6)
    assert one.shape == (2, 48, 48)

    np.save(tmp_path / "kspace.npy", kspace)
    np.save(tmp_path / "mask.npy", mask)
    result = CliRunner().invoke(cli, ["reconstruct", str(tmp_path / "kspace.npy"), str(tmp_path / "out.nii.gz"),
                                      "--mask", str(tmp_path / "mask.npy"), "--iterations", "4", "--channels", "8",
                                      "--blocks", "3", "--device", "cpu"])
    assert result.exit_code in (0, EXIT_FIDELITY), result.output  # 3: so short a fit may be flagged
    assert "reconstruction check" in result.output
    assert read_volume(tmp_path / "out.nii.gz").shape == (2, 48, 48)
    refused = CliRunner().invoke(cli, ["reconstruct", str(tmp_path / "kspace.npy"), str(tmp_path / "o2.nii.gz"),
                                       "--views", "60"])
    assert refused.exit_code == 2 and "--views applies to --simulate ct or a raw sinogram, not to raw k-space" in \
        refused.output
