"""What a user of each door sees first (issue 31): outputs, devices and files checked before any fitting; the
modality and its units; progress; expectations on a CPU; reconstruct's options and summary."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dd_medical.api
import dd_medical.pipeline
from dd_medical import presets
from dd_medical.cli import cli
from dd_medical.codec.format import read_header
from dd_medical.core.intensity import default_window, resolve_modality
from dd_medical.core.reconstruction_check import ReconstructionCheck, SliceReconstructionCheck
from dd_medical.errors import InputError
from dd_medical.io import output_format, write_image, write_series
from dd_medical.phantom import phantom_volume
from dd_medical.pipeline import Tracker
from dd_medical.volume import Volume


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


# ---- issue 31, command line: --modality, progress, expectations on a CPU, reconstruct's options ----------------

TINY = ["--iterations", "3", "--channels", "4", "--blocks", "2", "--device", "cpu"]


def _mr_like(depth: int = 2, size: int = 32) -> np.ndarray:
    """Magnitudes (never negative) with one very bright voxel: the MR window clips it, the CT window does not."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 200 + 150 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.05)
    values = np.stack([body + rng.normal(0, 10, body.shape) for _ in range(depth)]).clip(0).astype(np.float32)
    values[0, 2, 2] = 5000
    return values


@pytest.fixture()
def seen_denoise(monkeypatch):
    """api.denoise records its keywords and returns its input (no fit)."""
    calls = []

    def denoise(volume, preset=None, **kwargs):
        calls.append(kwargs)
        return volume

    monkeypatch.setattr(dd_medical.api, "denoise", denoise)
    return calls


def test_the_modality_of_a_file_that_does_not_record_it_follows_a_stated_rule():
    assert resolve_modality("OT", np.array([-1000.0, 40.0])) == "CT"
    assert resolve_modality(None, np.array([0.0, 900.0])) == "MR"
    assert resolve_modality("mr", np.array([-5.0])) == "MR"  # a recorded modality wins
    assert resolve_modality("PT", np.array([0.0, 1.0])) == "PT"
    assert dd_medical.api.modality_of(Volume(_mr_like(), modality="OT")) == "MR"
    assert dd_medical.api.modality_of(_mr_like()) == "CT"  # an array is HU unless told otherwise


@pytest.mark.parametrize("values, modality, units", [
    (lambda: phantom_volume(depth=2, size=32).array, "CT", "HU"),
    (_mr_like, "MR", "stored values"),
])
def test_denoise_takes_a_nifti_as_ct_or_mr_by_its_values_and_says_so(tmp_path, seen_denoise, values, modality,
                                                                     units):
    src = write_image(Volume(values()), tmp_path / "in.nii.gz")
    result = CliRunner().invoke(cli, ["denoise", str(src), str(tmp_path / "out.nii.gz"), *TINY])
    assert result.exit_code == 0, result.output
    assert seen_denoise[0]["modality"] == modality
    assert f"taken as {modality}" in result.stderr and "--modality" in result.stderr
    assert f"({modality})" in result.stdout and f" {units};" in result.stdout


def test_modality_given_on_the_command_line_wins_and_nothing_is_guessed(tmp_path, seen_denoise):
    src = write_image(Volume(_mr_like()), tmp_path / "in.nii.gz")
    result = CliRunner().invoke(cli, ["denoise", str(src), str(tmp_path / "out.nii.gz"), "--modality", "CT", *TINY])
    assert result.exit_code == 0, result.output
    assert seen_denoise[0]["modality"] == "CT" and "taken as" not in result.output and " HU;" in result.stdout


def test_a_dicom_series_brings_its_own_modality(tmp_path, seen_denoise):
    write_series(Volume(_mr_like(), modality="MR"), tmp_path / "mr", series_description="mr")
    result = CliRunner().invoke(cli, ["denoise", str(tmp_path / "mr"), str(tmp_path / "out.nii.gz"), *TINY])
    assert result.exit_code == 0, result.output
    assert seen_denoise[0]["modality"] == "MR" and "taken as" not in result.output
    assert "stored values" in result.stdout


def test_window_help_names_the_units_of_each_modality():
    for command in ("denoise", "compress", "batch"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        assert "in HU mapped" not in text and "HU for CT, stored values for MR" in text, command


def test_compress_windows_an_mr_file_as_mr(tmp_path):
    values = _mr_like(depth=1)
    src = write_image(Volume(values), tmp_path / "in.nii.gz")
    out = tmp_path / "out.ddc"
    result = CliRunner().invoke(cli, ["compress", str(src), str(out), "--iterations", "2", "--refine-iterations",
                                      "0", "--channels", "4", "--blocks", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, _ = read_header(out.read_bytes(), out)
    mr = default_window(values, "MR")
    assert header["window"] == pytest.approx([mr.low, mr.high]) and header["window"][1] < 5000
    assert "stored values (MR)" in result.stdout


def test_progress_only_rises_stays_in_range_and_shows_no_fractional_counts(capsys):
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's "clamping frac to range [0, 1]" would fail here
        bar = Tracker(8, "denoising", True)
        callback = Tracker(8, "denoising", seen.append)
        for tracker in (bar, callback):
            shown = []
            for done in (0.1, 0.7, 1 / 3, 2.1 + 1e-9, 1.0, 7.999999999, 8.000000001, 8):  # 1/3: a retried batch
                tracker.to(done)
                shown.append(tracker.bar.n)
            tracker.close()
            assert shown == sorted(shown) and 0 < shown[0] and shown[-1] == 8
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 < f <= 1 for f in seen)
    err = capsys.readouterr().err
    assert "/8" not in err and "<-" not in err and "8 slices" in err


def test_api_progress_callback_rises_to_one_also_while_compress_refines():
    seen = []
    dd_medical.api.compress(_mr_like(depth=1), iterations=4, refine_iterations=4, channels=4, blocks=2, device="cpu",
                            progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert any(0.5 < f < 1 for f in seen)  # the refinement (half of the steps here) is counted too
    seen.clear()
    dd_medical.api.denoise(_mr_like(depth=2), "fast", iterations=3, channels=4, device="cpu", progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 3  # one batch, a value per step


def test_batch_log_has_one_line_per_series_and_no_bar(tmp_path):
    for k in range(2):
        write_series(phantom_volume(depth=2, size=32), tmp_path / "in" / f"s{k}", series_description=f"s{k}")
    result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--preset", "fast",
                                      *TINY])
    assert result.exit_code in (0, 3), result.output
    assert "\r" not in result.output and "\x1b[" not in result.output and "%|" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("series ")]
    assert len(lines) == 2, result.stderr
    for number, line in enumerate(lines, start=1):  # done, or check: written but flagged (tiny fits)
        assert re.fullmatch(rf"series {number}/2 (done|check): \S+ \(2 slice\(s\) in [0-9.]+ s\)", line), line


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_long_cpu_run_is_announced_once_from_measured_steps(caplog):
    caplog.set_level(logging.WARNING, logger="dd_medical")
    # 100 slices; each update is 1% of one slice and takes 10 s on the fake clock: ~28 h in all
    tracker = Tracker(100, "denoising", False, device=torch.device("cpu"), faster="the 'fast' preset",
                      clock=FakeClock(10.0))
    for i in range(1, 50):
        tracker.to(i / 100)
    (record,) = [r for r in caplog.records if "may take" in r.getMessage()]
    assert "the 'fast' preset" in record.getMessage() and " h " in record.getMessage()
    caplog.clear()
    quick = Tracker(100, "denoising", False, device=torch.device("cpu"), faster="x", clock=FakeClock(0.001))
    gpu = Tracker(100, "denoising", False, device=torch.device("cuda"), faster="x", clock=FakeClock(10.0))
    for i in range(1, 50):
        quick.to(i / 100)
        gpu.to(i / 100)
    assert not caplog.records  # short, or not on a CPU: nothing said


def test_denoise_on_a_cpu_names_faster_choices_when_the_estimate_is_long(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dd_medical.pipeline, "LONG_RUN_S", 0.0)
    monkeypatch.setattr(dd_medical.pipeline, "PROBE_S", 0.0)
    caplog.set_level(logging.WARNING, logger="dd_medical")
    src = write_image(phantom_volume(depth=2, size=32), tmp_path / "in.nii.gz")
    result = CliRunner().invoke(cli, ["denoise", str(src), str(tmp_path / "out.nii.gz"), *TINY])
    assert result.exit_code in (0, 3), result.output
    (record,) = [r for r in caplog.records if "may take" in r.getMessage()]
    assert "on the CPU" in record.getMessage() and "'fast' preset" in record.getMessage()


@pytest.fixture()
def seen_reconstruct(monkeypatch):
    """api.reconstruct records its config and returns the baseline (no fit)."""
    calls = []

    def reconstruct(measurements, operator, preset=None, *, config, report=False, **kwargs):
        calls.append(config)
        image = dd_medical.api.baseline(measurements, operator)
        if not report:
            return image
        passed = tuple(SliceReconstructionCheck(i, 0.0, None) for i in range(len(image)))
        return image, ReconstructionCheck(passed, decoders=1, baseline=operator.baseline_name)

    monkeypatch.setattr(dd_medical.api, "reconstruct", reconstruct)
    return calls


def test_reconstruct_preset_default_is_the_reconstruction_preset_and_its_flags_reach_it(image, tmp_path,
                                                                                       seen_reconstruct):
    for i, extra in enumerate([["--preset", "default"], ["--compile", "--iterations", "7"]]):
        result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / f"out{i}.nii.gz"), "--simulate",
                                          "mri", *extra])
        assert result.exit_code == 0, result.output
    named, flagged = seen_reconstruct
    assert named == presets.PRESETS["reconstruct/mri"]["default"]
    assert flagged.compile and flagged.iterations == 7 and flagged.architecture == "both"


@pytest.mark.parametrize("args, message", [
    (["--slab", "3"], "No such option '--slab'"),
    (["--fp32"], "No such option '--fp32'"),
    (["--preset", "high"], "'high' is not 'default'"),
    (["--preset", "sure"], "'sure' is not 'default'"),
    (["--acceleration", "8"], "--acceleration applies to --simulate mri, not to --simulate ct"),
    (["--missing", "0.3"], "--missing applies to --simulate inpaint, not to --simulate ct"),
    (["--image-size", "32"], "--image-size applies to a raw sinogram, not to --simulate ct"),
])
def test_reconstruct_refuses_by_name_every_flag_that_would_do_nothing(image, tmp_path, args, message, no_fitting):
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "out.nii.gz"), "--simulate", "ct",
                                      *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_reconstruct_offers_only_what_it_uses():
    text = CliRunner().invoke(cli, ["reconstruct", "--help"]).output
    assert "--preset [default]" in text and "--compile" in text
    assert "--slab" not in text and "--fp32" not in text and "medium" not in text


def test_reconstruct_summary_says_what_the_baseline_is_and_which_is_better(image, tmp_path, seen_reconstruct):
    result = CliRunner().invoke(cli, ["reconstruct", str(image), str(tmp_path / "out.nii.gz"), "--simulate", "ct",
                                      "--views", "16"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "filtered back-projection baseline PSNR" in text and "higher is better" in text
    assert "the reconstruction is as good as the baseline" in text  # the stand-in returns the baseline itself


def test_reconstruct_refuses_a_sinogram_option_for_raw_k_space(tmp_path, no_fitting):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "k.npy", (rng.normal(size=(1, 1, 32, 32)) + 1j * rng.normal(size=(1, 1, 32, 32))).astype(
        np.complex64))
    result = CliRunner().invoke(cli, ["reconstruct", str(tmp_path / "k.npy"), str(tmp_path / "out.nii.gz"),
                                      "--views", "10"])
    assert result.exit_code == 2 and "--views applies to --simulate ct or a raw sinogram, not to raw k-space" in \
        result.output


# ---- issue 31, DICOM: --transfer-syntax, legacy multi-frame objects --------------------------------------------


@pytest.fixture()
def jpegls_unavailable(monkeypatch):
    """JPEG-LS has no encoder here, whether or not pyjpegls is installed."""
    import dd_medical.io.transfer_syntax as module

    real = module.encoder_problem
    monkeypatch.setattr(module, "encoder_problem", lambda uid: "no encoder installed: pip install pyjpegls"
                        if uid == "1.2.840.10008.1.2.4.80" else real(uid))


@pytest.mark.parametrize("command", ["denoise", "batch"])
@pytest.mark.parametrize(("choice", "message"), [
    ("jpeg2000", "transfer syntax 'jpeg2000' is not offered"),
    ("1.2.840.10008.1.2.4.50", "(JPEG Baseline (Process 1)) is not offered"),
    ("jpegls-lossless", "JPEG-LS Lossless Image Compression): no encoder installed: pip install pyjpegls"),
])
def test_an_unknown_lossy_or_unavailable_transfer_syntax_is_one_line_before_fitting(
        tmp_path, command, choice, message, jpegls_unavailable, no_fitting):
    from pydicom.data import get_testdata_file

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ct.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    result = CliRunner().invoke(cli, [command, str(tmp_path / "in"), str(tmp_path / "out"), "--transfer-syntax",
                                      choice])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("dd-medical: error: ") and message in line
    assert not (tmp_path / "out").exists()


def test_transfer_syntax_with_an_image_output_is_refused(image, tmp_path, no_fitting):
    result = CliRunner().invoke(cli, ["denoise", str(image), str(tmp_path / "out.nii.gz"), "--transfer-syntax", "rle"])
    assert result.exit_code == 2 and "--transfer-syntax applies to a DICOM series OUTPUT" in result.output


@pytest.mark.parametrize(("args", "expected"), [
    ([], "1.2.840.10008.1.2.5"),  # auto: the RLE source's own
    (["--transfer-syntax", "jpeg2000-lossless"], "1.2.840.10008.1.2.4.90"),
    (["--transfer-syntax", "explicit"], "1.2.840.10008.1.2.1"),
])
def test_denoise_keeps_a_lossless_sources_compression_or_the_chosen_one(tmp_path, seen_denoise, args, expected):
    import pydicom
    from pydicom.data import get_testdata_file

    result = CliRunner().invoke(cli, ["denoise", get_testdata_file("MR_small_RLE.dcm"), str(tmp_path / "out"),
                                      *TINY, *args])
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "out").iterdir()
    assert pydicom.dcmread(written).file_meta.TransferSyntaxUID == expected


def test_denoise_a_legacy_multiframe_object_frame_by_frame(tmp_path):
    """emri_small.dcm: 10 frames, no functional groups; it was refused ("without per-frame functional groups")."""
    import pydicom
    from pydicom.data import get_testdata_file

    from dd_medical.io import read_volume, validate_derived

    source_path = get_testdata_file("emri_small.dcm")
    result = CliRunner().invoke(cli, ["denoise", source_path, str(tmp_path / "out"), "--preset", "fast",
                                      "--iterations", "2", "--device", "cpu"])
    assert result.exit_code in (0, 3), result.output  # 3: written, the 2-step fit flagged by the fidelity check
    assert "denoised 10 slice(s) of 64x64 (MR)" in result.output
    (written,) = (tmp_path / "out").iterdir()
    ds, source = pydicom.dcmread(written), pydicom.dcmread(source_path)
    assert ds.NumberOfFrames == 10 and ds.SOPClassUID == source.SOPClassUID
    assert validate_derived(ds, source) == []
    back, before = read_volume(tmp_path / "out"), read_volume(source_path)
    assert back.shape == before.shape == (10, 64, 64)
    assert all(not np.allclose(back.array[k], before.array[k]) for k in range(10))  # every frame denoised
