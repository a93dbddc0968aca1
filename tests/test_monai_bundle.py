"""The MONAI bundle in examples/monai_bundle: its layout and metadata, parsed by ``monai.bundle.ConfigParser`` and run
by ``monai.bundle`` (twice: the second run stops before any fitting, or replaces the outputs with ``overwrite``)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

import dd_medical
from dd_medical import api
from dd_medical.io import read_volume, write_series
from dd_medical.monai_outputs import OutputExistsError, as_flag, check_outputs, planned_outputs
from dd_medical.phantom import write_phantom_series
from dd_medical.transforms import DeepDecoderDenoised

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "examples" / "monai_bundle"
CONFIG = BUNDLE / "configs" / "inference.json"
META = BUNDLE / "configs" / "metadata.json"
#: The current MONAI bundle metadata schema and the keys it requires (MONAI-extra-test-data 0.8.1).
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_REQUIRED = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                   "required_packages_version", "task", "description", "authors", "copyright", "network_data_format")
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
TINY_RUN = {"preset": "fast", "iterations": 5, "channels": 8, "device": "cpu"}
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


def check_written(output_dir: Path, source_dir: Path) -> None:
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
    targets = [parser[t[1:]] if isinstance(t, str) else t for t in parser["preprocessing"]["transforms"]]
    targets = [t["_target_"] for t in targets]
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
    assert [w.saver.output_ext for w in preprocessing.transforms[3:]] == [".nii.gz", ".dcm", ".nii.gz"]
    assert denoise.uncertainty is False and len(parser.get_parsed_content("savers")) == 2  # the default: off


def test_the_uncertainty_option_adds_the_key_and_its_saver():
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["uncertainty"] = "true"  # as the command line passes it
    denoise = parser.get_parsed_content("preprocessing").transforms[2]
    assert denoise.uncertainty is True and denoise.uncertainty_key("image") == "image_uncertainty"
    savers = parser.get_parsed_content("savers")
    assert [s.keys for s in savers][-1] == ("image_uncertainty",) and savers[-1].saver.output_ext == ".nii.gz"


def test_the_bundle_has_the_standard_layout():
    """configs/ (inference, metadata, logging), docs/README.md and LICENSE, as ``monai.bundle`` tools expect."""
    layout = ("configs/inference.json", "configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE")
    for name in layout:
        assert (BUNDLE / name).is_file(), name
    assert not (BUNDLE / "README.md").exists()
    assert (BUNDLE / "LICENSE").read_text() == (REPO / "LICENSE").read_text()


def test_the_metadata_is_complete_and_names_what_is_written():
    meta = json.loads(META.read_text())
    assert meta["schema"] == SCHEMA
    assert [key for key in SCHEMA_REQUIRED if key not in meta] == []
    assert meta["version"] in meta["changelog"]
    # MONAI (1.4 to 1.6 at least) reads "optional_packages_version" as a deprecated name of
    # "required_packages_version" and replaces the latter with it: every package goes in the required list.
    assert "optional_packages_version" not in meta
    assert {"dd-medical", "pydicom", "nibabel", "fire"} <= set(meta["required_packages_version"])
    assert meta["required_packages_version"]["dd-medical"] == dd_medical.__version__
    parser = ConfigParser()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated name in it
        parser.read_meta(str(META))
    assert parser["_meta_"]["required_packages_version"] == meta["required_packages_version"]
    parser.read_config(str(CONFIG))
    savers = [parser[ref[1:]] if isinstance(ref, str) else ref for ref in parser["preprocessing"]["transforms"]]
    written = {s["keys"] for s in savers if s["_target_"] == "SaveImaged"}
    outputs = meta["network_data_format"]["outputs"]
    assert set(outputs) == written == {"image", "image_uncertainty"}
    for tensor in [*outputs.values(), *meta["network_data_format"]["inputs"].values()]:
        assert [key for key in TENSOR_REQUIRED if key not in tensor] == []


#: A verbatim copy of the schema named by the metadata (the MONAI-extra-test-data 0.8.1 release asset, also served
#: at https://project-monai.github.io/schema/meta_schema_20240725.json), so MONAI's own check runs offline.
LOCAL_SCHEMA = REPO / "tests" / "data" / "monai_meta_schema_20240725.json"
LOCAL_SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"


def test_the_metadata_passes_monais_own_verify_metadata(tmp_path):
    """``python -m monai.bundle verify_metadata`` (the same function, against a local copy of the schema: MONAI
    skips the download of a schema file that exists and matches the hash). The metadata written with the name
    MONAI no longer reads, ``optional_packages_version``, fails it, naming the required key."""
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    schema.write_bytes(LOCAL_SCHEMA.read_bytes())
    verify_metadata(meta_file=str(META), filepath=str(schema), hash_val=LOCAL_SCHEMA_MD5)

    meta = json.loads(META.read_text())
    meta["optional_packages_version"] = meta.pop("required_packages_version")
    old = tmp_path / "old_metadata.json"
    old.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'required_packages_version' is a required property"):
        verify_metadata(meta_file=str(old), filepath=str(schema), hash_val=LOCAL_SCHEMA_MD5)


def test_planned_outputs_follow_the_savers_layout(noisy_series, tmp_path):
    from monai.transforms import SaveImage, SaveImaged

    savers = [SaveImaged("image", output_dir=tmp_path, output_postfix="dd", output_ext=".nii.gz"),
              SaveImaged("image", output_dir=tmp_path, output_postfix="dd", output_ext=".dcm"),
              SaveImage(output_dir=tmp_path / "flat", output_postfix="x", separate_folder=False)]
    data = [{"image": f"{noisy_series}/"}, {"label": "ignored"}]
    assert planned_outputs(savers, data) == [tmp_path / "ct_noisy" / "ct_noisy_dd.nii.gz",
                                             tmp_path / "ct_noisy" / "ct_noisy_dd",
                                             tmp_path / "flat" / "ct_noisy_x.nii.gz"]
    assert list(tmp_path.iterdir()) == []  # asking creates nothing
    (tmp_path / "ct_noisy" / "ct_noisy_dd").mkdir(parents=True)  # an empty folder is filled, not refused
    assert check_outputs(savers, data) == planned_outputs(savers, data)
    (tmp_path / "ct_noisy" / "ct_noisy_dd.nii.gz").write_bytes(b"")
    with pytest.raises(OutputExistsError, match=r"1 output\(s\) exist already: .*ct_noisy_dd.nii.gz"):
        check_outputs(savers, data, overwrite="false")
    check_outputs(savers, data, overwrite="true")

    # a key the pipeline makes from another (the uncertainty map of "image") is named after that key's source
    derived = [SaveImaged("image_uncertainty", output_dir=tmp_path, output_postfix="dd_uncertainty")]
    assert planned_outputs(derived, data) == []
    assert planned_outputs(derived, data, source_keys={"image_uncertainty": "image"}) == [
        tmp_path / "ct_noisy" / "ct_noisy_dd_uncertainty.nii.gz"]


@pytest.mark.parametrize(("value", "flag"), [(True, True), (False, False), ("true", True), ("False", False),
                                             ("yes", True), ("no", False), (1, True), (0, False)])
def test_as_flag_reads_command_line_booleans(value, flag):
    assert as_flag(value) is flag


def test_as_flag_rejects_anything_else():
    with pytest.raises(ValueError, match="true or false"):
        as_flag("maybe")


@needs_nibabel
def test_bundle_runs_through_monai_bundle_run(noisy_series, tmp_path):
    from monai.bundle import run

    run(config_file=str(CONFIG), meta_file=str(META), input_dir=str(noisy_series), output_dir=str(tmp_path),
        preset="fast", iterations=20, channels=16, device="cpu")
    check_written(tmp_path, noisy_series)


@needs_nibabel
def test_bundle_saves_the_uncertainty_map_when_asked(noisy_series, tmp_path):
    """``uncertainty true``: ``<name>_dd_uncertainty.nii.gz`` on the image's grid (SD in HU), planned with the
    other outputs (a second run stops before fitting, naming all three)."""
    import nibabel as nib
    from monai.bundle import run

    args = {"config_file": str(CONFIG), "meta_file": str(META), "input_dir": str(noisy_series),
            "output_dir": str(tmp_path), **TINY_RUN, "preset": "medium", "uncertainty": "true"}
    run(**args)
    folder = tmp_path / "ct_noisy"
    assert sorted(p.name for p in folder.iterdir()) == ["ct_noisy_dd", "ct_noisy_dd.nii.gz",
                                                        "ct_noisy_dd_uncertainty.nii.gz"]
    check_written(tmp_path, noisy_series)
    image, sd = nib.load(str(folder / "ct_noisy_dd.nii.gz")), nib.load(str(folder / "ct_noisy_dd_uncertainty.nii.gz"))
    np.testing.assert_allclose(sd.affine, image.affine)
    values = np.asarray(sd.get_fdata())
    assert values.shape == image.shape and np.isfinite(values).all() and values.min() >= 0 and values.max() > 0

    with pytest.raises(RuntimeError) as failure:
        run(**args)
    assert isinstance(failure.value.__cause__, OutputExistsError)
    assert "3 output(s) exist already" in str(failure.value.__cause__)


def _series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


@needs_nibabel
def test_bundle_run_twice_stops_before_fitting_or_overwrites(noisy_series, tmp_path, monkeypatch):
    """The second run into the same folder fails at once (no slice fitted, outputs untouched); with overwrite, both
    outputs are replaced."""
    from monai.bundle import run

    fits = []
    denoise = api.denoise
    monkeypatch.setattr(api, "denoise", lambda *a, **kw: fits.append(1) or denoise(*a, **kw))
    args = {"config_file": str(CONFIG), "meta_file": str(META), "input_dir": str(noisy_series),
            "output_dir": str(tmp_path), **TINY_RUN}
    run(**args)
    assert fits
    nifti, dicom = tmp_path / "ct_noisy" / "ct_noisy_dd.nii.gz", tmp_path / "ct_noisy" / "ct_noisy_dd"
    first = (nifti.stat().st_mtime_ns, _series_uid(dicom))

    fits.clear()
    with pytest.raises(RuntimeError) as failure:
        run(**args)
    cause = failure.value.__cause__
    assert isinstance(cause, OutputExistsError) and "--overwrite true" in str(cause)
    assert str(nifti) in str(cause) and str(dicom) in str(cause)
    assert fits == [] and (nifti.stat().st_mtime_ns, _series_uid(dicom)) == first

    run(**args, overwrite=True)
    assert fits and _series_uid(dicom) != first[1] and nifti.stat().st_mtime_ns != first[0]
    assert sorted(p.name for p in (tmp_path / "ct_noisy").iterdir()) == ["ct_noisy_dd", "ct_noisy_dd.nii.gz"]
    check_written(tmp_path, noisy_series)


@needs_nibabel
@pytest.mark.skipif(importlib.util.find_spec("fire") is None,
                    reason="`python -m monai.bundle` needs the fire package (pip install fire)")
def test_bundle_runs_from_the_command_line_twice(noisy_series, tmp_path):
    """What a MONAI user types, twice: the second run fails before fitting, its cause the first error shown."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--meta_file", str(META),
               "--input_dir", str(noisy_series), "--output_dir", str(tmp_path),
               *[arg for key, value in TINY_RUN.items() for arg in (f"--{key}", str(value))]]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "outputs written under" in done.stdout
    check_written(tmp_path, noisy_series)

    again = subprocess.run([*command, "--overwrite", "false"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode != 0 and "outputs written under" not in again.stdout
    errors = re.findall(r"^[\w.]+(?:Error|Exception): .*$", again.stderr, flags=re.M)
    assert errors and errors[0].startswith("dd_medical.monai_outputs.OutputExistsError: 2 output(s) exist already")
    assert "--overwrite true" in errors[0] and "dd_medical.pipeline" not in again.stdout + again.stderr  # no fit
