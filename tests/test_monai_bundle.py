"""The MONAI bundle in examples/monai_bundle: parsed by ``monai.bundle.ConfigParser`` and run by ``monai.bundle``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

import dd_medical
from dd_medical.io import read_volume, write_series
from dd_medical.phantom import write_phantom_series
from dd_medical.transforms import DeepDecoderDenoised

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "examples" / "monai_bundle"
CONFIG = BUNDLE / "configs" / "inference.json"
META = BUNDLE / "configs" / "metadata.json"
needs_nibabel = pytest.mark.skipif(importlib.util.find_spec("nibabel") is None,
                                   reason="the bundle's NIfTI output needs nibabel (pip install nibabel)")


@pytest.fixture(scope="module")
def noisy_series(tmp_path_factory) -> Path:
    """A 2-slice 48x48 CT phantom series with +N(0, 100 HU) noise, written as a derived DICOM series."""
    root = tmp_path_factory.mktemp("bundle_input")
    write_phantom_series(root / "clean", depth=2, size=48)
    clean = read_volume(root / "clean")
    noise = np.random.default_rng(0).normal(0, 100, clean.shape).astype(np.float32)
    write_series(clean.with_array(clean.array + noise), root / "ct_noisy", series_description="noisy phantom")
    return root / "ct_noisy"


def check_outputs(output_dir: Path, source_dir: Path) -> None:
    import nibabel as nib

    source = read_volume(source_dir)
    nifti = nib.load(str(output_dir / "ct_noisy" / "ct_noisy_dd.nii.gz"))
    assert nifti.shape == tuple(reversed(source.shape))  # (x, y, z)
    written = read_volume(output_dir / "ct_noisy" / "ct_noisy_dd")
    assert written.shape == source.shape and written.modality == "CT"
    np.testing.assert_allclose(written.array, np.asarray(nifti.get_fdata()).transpose(2, 1, 0), atol=0.51)
    assert not np.allclose(written.array, source.array, atol=1.0)  # it was denoised, not copied
    header = pydicom.dcmread(written.source_files[0], stop_before_pixels=True)
    assert header.ImageType[0] == "DERIVED" and "Deep Decoder" in header.DerivationDescription


def test_config_parses_with_the_transform_by_dotted_path():
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.read_meta(str(META))
    targets = [t["_target_"] for t in parser["preprocessing"]["transforms"]]
    assert targets[:3] == ["LoadImaged", "EnsureChannelFirstd", "dd_medical.transforms.DeepDecoderDenoised"]
    assert parser["_meta_"]["required_packages_version"]["dd-medical"] == dd_medical.__version__
    assert Path(parser.get_parsed_content("input_dir")) == dd_medical.demo.sample_series_dir()

    parser["iterations"] = 7
    parser["channels"] = 12
    preprocessing = parser.get_parsed_content("preprocessing")
    assert isinstance(preprocessing, Compose)
    denoise = preprocessing.transforms[2]
    assert isinstance(denoise, DeepDecoderDenoised)
    assert (denoise.converter.config.iterations, denoise.converter.config.channels) == (7, 12)
    assert [w.saver.output_ext for w in preprocessing.transforms[3:]] == [".nii.gz", ".dcm"]


@needs_nibabel
def test_bundle_runs_through_monai_bundle_run(noisy_series, tmp_path):
    from monai.bundle import run

    run(config_file=str(CONFIG), meta_file=str(META), input_dir=str(noisy_series), output_dir=str(tmp_path),
        preset="fast", iterations=20, channels=16, device="cpu")
    check_outputs(tmp_path, noisy_series)


@needs_nibabel
@pytest.mark.skipif(importlib.util.find_spec("fire") is None,
                    reason="`python -m monai.bundle` needs the fire package (pip install fire)")
def test_bundle_runs_from_the_command_line(noisy_series, tmp_path):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG),
        "--input_dir", str(noisy_series), "--output_dir", str(tmp_path),
        "--preset", "fast", "--iterations", "5", "--channels", "8", "--device", "cpu",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "outputs written under" in done.stdout
    check_outputs(tmp_path, noisy_series)
