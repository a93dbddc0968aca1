import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from dd_medical.cli import EXIT_FIDELITY, cli
from dd_medical.io import read_volume, write_image, write_series
from dd_medical.phantom import phantom_volume
from dd_medical.volume import Volume

#: Exit codes of a run whose output is written: 3 when the fidelity check flags the tiny test fits.
WRITTEN = (0, EXIT_FIDELITY)
TINY = ["--preset", "fast", "--iterations", "15", "--channels", "8", "--blocks", "4", "--device", "cpu"]


def _noisy_phantom(depth: int = 2, size: int = 32) -> Volume:
    clean = phantom_volume(depth=depth, size=size)
    rng = np.random.default_rng(0)
    return clean.with_array(clean.array + rng.normal(0, 30, clean.shape).astype(np.float32))


def run(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_denoise_image_file_to_image_file_keeps_geometry(tmp_path):
    noisy = _noisy_phantom()
    src = write_image(noisy, tmp_path / "in.nrrd")
    before = src.read_bytes()
    code, out = run("denoise", str(src), str(tmp_path / "out.nii.gz"), *TINY)
    assert code in WRITTEN, out
    assert "denoised 2 slice(s) of 32x32" in out and "fidelity check" in out
    result = read_volume(tmp_path / "out.nii.gz")
    assert result.shape == noisy.shape
    np.testing.assert_allclose(result.spacing, noisy.spacing, atol=1e-5)
    np.testing.assert_allclose(result.origin, noisy.origin, atol=1e-4)
    assert src.read_bytes() == before  # input untouched


def test_denoise_dicom_series_to_derived_series(tmp_path):
    noisy = _noisy_phantom()
    write_series(noisy, tmp_path / "in", series_description="noisy phantom")
    code, out = run("denoise", str(tmp_path / "in"), str(tmp_path / "out"), *TINY)
    assert code in WRITTEN, out
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    src = pydicom.dcmread(sorted((tmp_path / "in").glob("*.dcm"))[0])
    assert ds.ImageType[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.StudyInstanceUID == src.StudyInstanceUID
    assert "Deep Decoder" in ds.DerivationDescription
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    assert reader.Execute().GetSize() == (32, 32, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "empty"),
        (lambda d: (d / "note.txt").write_text("hello") and d / "note.txt", ""),
    ],
)
def test_bad_input_is_one_line_exit_2_naming_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "dd_medical.cli", "denoise", str(path), str(tmp_path / "out.nrrd"), *TINY],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("dd-medical: error:") and str(path) in lines[0] and problem in lines[0]
    assert not (tmp_path / "out.nrrd").exists()


def test_4d_image_is_rejected(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((2, 3, 16, 16), np.float32), isVector=False)
    sitk.WriteImage(image, str(tmp_path / "four_d.nrrd"))
    code, out = run("denoise", str(tmp_path / "four_d.nrrd"), str(tmp_path / "o.nrrd"), *TINY)
    assert code == 2 and "four_d.nrrd" in out


def test_existing_output_is_refused_before_fitting(tmp_path):
    src = write_image(_noisy_phantom(), tmp_path / "in.nrrd")
    (tmp_path / "out.nrrd").write_text("keep me")
    code, out = run("denoise", str(src), str(tmp_path / "out.nrrd"), *TINY)
    assert code == 2 and "refusing to overwrite" in out
    assert (tmp_path / "out.nrrd").read_text() == "keep me"


def test_demo_writes_series_and_panel_and_reports_psnr(tmp_path):
    out_dir = tmp_path / "demo"
    code, out = run("demo", "--output", str(out_dir), "--iterations", "10", "--channels", "8", "--blocks", "4",
                    "--device", "cpu")
    assert code in WRITTEN, out
    assert "mean" in out and "PSNR" in out and "fidelity check" in out
    assert "low-dose scan (10000 photons per ray" in out and "against the same scan without noise" in out
    assert len(list((out_dir / "denoised_series").glob("*.dcm"))) == 8
    panel = sitk.ReadImage(str(out_dir / "demo_panel.png"))
    assert panel.GetSize()[0] > 4 * 384  # four labelled tiles, enlarged to at least 384 px
    code, out = run("demo", "--output", str(out_dir), "--iterations", "5", "--channels", "4", "--blocks", "3",
                    "--noise-hu", "50")
    assert code in WRITTEN  # an earlier demo folder is replaced
    assert "white Gaussian noise of 50 HU" in out and "against the clean series" in out
    code, out = run("demo", "--output", str(out_dir), "--photons", "1e5", "--noise-hu", "50")
    assert code == 2 and "give one" in out


def test_the_demo_scan_has_correlated_noise_of_a_low_dose_scan():
    from dd_medical.demo import DEMO_PHOTONS, low_dose_scan, sample_series_dir

    series = read_volume(sample_series_dir())
    noisy, noise_free = low_dose_scan(series.array[:1], float(series.spacing[0]), DEMO_PHOTONS)
    assert noisy.shape == noise_free.shape == (1, *series.shape[1:])
    body = series.array[0] > -500
    error = (noisy - noise_free)[0]
    assert 30 < float(error[body].std()) < 90  # a low-dose scan's noise in HU, not the 196 HU of the earlier demo
    pairs = body[:, 1:] & body[:, :-1]
    across = float(np.corrcoef(error[:, :-1][pairs], error[:, 1:][pairs])[0, 1])
    assert abs(across) > 0.1  # FBP noise: neighbours are correlated, unlike white noise
    typical = float(np.median(np.abs(noise_free[0] - series.array[0])[body]))
    assert typical < 10  # the noise-free scan is the phantom, up to the scan's resolution at edges (HU)


def test_console_script_help_and_version():
    code, out = run("--version")
    assert code == 0 and "dd-medical" in out
    code, out = run("denoise", "--help")
    assert code == 0 and "--iterations" in out and "--device" in out


def test_fit_options_reach_the_config(monkeypatch, tmp_path):
    seen = []

    def denoise(volume, preset=None, *, config, **kwargs):  # records the settings; no fit
        seen.append(config)
        return volume

    monkeypatch.setattr("dd_medical.api.denoise", denoise)
    src = str(write_image(_noisy_phantom(depth=1), tmp_path / "in.nrrd"))
    out = iter(str(tmp_path / f"out{i}.nrrd") for i in range(4))
    assert run("denoise", src, next(out), "--preset", "fast", "--slab", "3", "--fp32")[0] == 0
    assert run("denoise", src, next(out))[0] == 0
    assert run("denoise", src, next(out), "--compile")[0] == 0
    assert run("denoise", src, next(out), "--preset", "speed", "--iterations", "600")[0] == 0
    flagged, default, compiled, speed = seen
    assert (flagged.amp, flagged.slab, flagged.channels) == (False, 3, 32)  # fast preset's k=32
    assert (default.amp, default.slab, default.channels) == (True, 1, 64)  # bf16 on CUDA unless --fp32
    assert not default.compile and compiled.compile and compiled.ensemble == 2
    assert (speed.compile, speed.ensemble, speed.iterations) == (True, 1, 600)


@pytest.mark.parametrize("args, message", [
    (["denoise", "{src}", "{out}", "--device", "gpu"], "unknown device 'gpu'"),
    (["denoise", "{src}", "{out}", "--preset", "extreme"], "'extreme' is not one of"),
    (["reconstruct", "{src}", "{out}", "--simulate", "ct", "--preset", "fast"], "'fast' is not 'default'"),
])
def test_bad_settings_exit_2_before_fitting(tmp_path, args, message):
    src = write_image(_noisy_phantom(depth=1), tmp_path / "in.nrrd")
    out = tmp_path / "out.nrrd"
    result = CliRunner().invoke(cli, [a.format(src=src, out=out) for a in args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
