"""What a user of each door sees first: outputs, devices and files checked before any fitting (issue 31)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import dd_medical.api
from dd_medical.cli import cli
from dd_medical.errors import InputError
from dd_medical.io import output_format, write_image
from dd_medical.phantom import phantom_volume


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "in.nii.gz"
    write_image(phantom_volume(depth=2, size=32), path)
    return path


@pytest.fixture()
def no_fitting(monkeypatch):
    """Any call of the engine fails the test: the errors below must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("fitting started")
    for name in ("denoise", "reconstruct", "compress"):
        monkeypatch.setattr(dd_medical.api, name, refuse)


@pytest.mark.parametrize("name", ["out.jpg", "out.nii.gzz", "series.v2"])
def test_an_unknown_output_extension_is_refused_before_fitting(image, tmp_path, name, no_fitting):
    result = CliRunner().invoke(cli, ["denoise", str(image), str(tmp_path / name), "--preset", "fast"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "unknown output extension" in line and ".nii.gz" in line and "--format dicom" in line
    assert not (tmp_path / name).exists()


def test_a_folder_with_a_dot_is_a_dicom_series_with_format_dicom():
    assert output_format("out/series.v2", "dicom") == "dicom"
    assert output_format("out/series") == "dicom"
    assert output_format("out/a.NII.GZ") == "image"
    with pytest.raises(InputError, match="unknown output extension"):
        output_format("out/a.png", "image")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_a_mistyped_device_is_one_line_before_reading(tmp_path, device, no_fitting):
    result = CliRunner().invoke(cli, ["denoise", str(tmp_path / "missing"), str(tmp_path / "out"), "--device", device])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"dd-medical: error: unknown device {device!r}; use auto, cpu, "
                                                  "cuda or cuda:N"]


def test_cuda_where_there_is_none_is_one_line(tmp_path, monkeypatch, no_fitting):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = CliRunner().invoke(cli, ["denoise", str(tmp_path / "missing"), str(tmp_path / "out"), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU is available" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_compress_wants_a_ddc_file_name(image, tmp_path, no_fitting):
    result = CliRunner().invoke(cli, ["compress", str(image), str(tmp_path / "out.dcc")])
    assert result.exit_code == 2 and "ends in .ddc" in result.output
