"""Issue 29, the uncertainty map in the command line, as a derived DICOM series and in the batch runner: where the
map goes, what its DICOM says about itself and which series it belongs to, the combinations refused before the
fit, and the batch's resumable uncertainty series and montage tile. Map values are never asserted exactly (the
calibration is refitted): only shapes, units, geometry, finiteness and signs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from dd_medical.batch import MANIFEST_NAME, SERIES_DIR, Manifest, run_batch, uncertainty_folder_name
from dd_medical.batch import tasks as batch_tasks
from dd_medical.cli import EXIT_FIDELITY, cli
from dd_medical.core.config import FitConfig
from dd_medical.errors import InputError
from dd_medical.io import read_volume, validate_derived, write_image, write_series, write_uncertainty_series
from dd_medical.io.dicom_uncertainty import CT_STEP, encode_sd, sd_step
from dd_medical.phantom import phantom_volume, write_phantom_series
from dd_medical.volume import Volume

WRITTEN = (0, EXIT_FIDELITY)  # 3: the tiny fits fail the fidelity check, by design
TINY = ["--preset", "fast", "--iterations", "12", "--channels", "8", "--blocks", "3", "--device", "cpu"]
TWO = [*TINY, "--ensemble", "2"]
BATCH = ["--iterations", "10", "--channels", "8", "--blocks", "2", "--ensemble", "2", "--device", "cpu"]


def _noisy(depth: int = 2, size: int = 32) -> Volume:
    clean = phantom_volume(depth=depth, size=size)
    rng = np.random.default_rng(0)
    return clean.with_array(clean.array + rng.normal(0, 30, clean.shape).astype(np.float32))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _by_position(folder: Path) -> dict[float, pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return {round(float(ds.ImagePositionPatient[2]), 3): ds for ds in datasets}


# -- denoise -------------------------------------------------------------------------------------------------------

def test_denoise_writes_the_map_as_an_image_file_of_the_output_geometry(tmp_path: Path) -> None:
    noisy = _noisy()
    src = write_image(noisy, tmp_path / "in.nrrd")
    code, out = run("denoise", str(src), str(tmp_path / "out.nii.gz"), "--uncertainty", str(tmp_path / "sd.nrrd"),
                    *TWO)
    assert code in WRITTEN, out
    line = [s for s in out.splitlines() if s.startswith("uncertainty:")]
    assert len(line) == 1 and "median" in line[0] and "HU" in line[0] and str(tmp_path / "sd.nrrd") in line[0]
    sd, denoised = read_volume(tmp_path / "sd.nrrd"), read_volume(tmp_path / "out.nii.gz")
    assert sd.shape == denoised.shape == noisy.shape
    np.testing.assert_allclose(sd.spacing, noisy.spacing, atol=1e-5)
    np.testing.assert_allclose(sd.origin, noisy.origin, atol=1e-4)
    assert np.all(np.isfinite(sd.array)) and sd.array.min() >= 0 and sd.array.max() > 0
    assert not np.allclose(sd.array, denoised.array)  # the map, not a second copy of the image


def test_denoise_writes_the_map_as_a_derived_series_that_references_the_denoised_one(tmp_path: Path) -> None:
    write_series(_noisy(), tmp_path / "in", series_description="noisy phantom")
    code, out = run("denoise", str(tmp_path / "in"), str(tmp_path / "out"), "--uncertainty", str(tmp_path / "sd"),
                    *TWO)
    assert code in WRITTEN, out
    sources, denoised, maps = (_by_position(tmp_path / name) for name in ("in", "out", "sd"))
    assert sorted(maps) == sorted(denoised) == sorted(sources) and len(maps) == 2
    (denoised_series,) = {ds.SeriesInstanceUID for ds in denoised.values()}
    (map_series,) = {ds.SeriesInstanceUID for ds in maps.values()}
    assert map_series != denoised_series
    for z, ds in maps.items():
        den, src = denoised[z], sources[z]
        assert ds.SeriesDescription == f"{den.SeriesDescription} uncertainty (SD, HU)"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.Modality == "CT"
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
                        "PixelSpacing", "SliceThickness", "SOPClassUID", "Rows", "Columns"):
            assert ds.get(keyword) == den.get(keyword), keyword
        assert ds.SOPInstanceUID not in (den.SOPInstanceUID, src.SOPInstanceUID)
        assert ds.ReferencedImageSequence[-1].ReferencedSOPInstanceUID == den.SOPInstanceUID
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == denoised_series
        assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == den.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID  # what the fit saw
        assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (CT_STEP, 0, "HU")
        assert ds.PixelRepresentation == 0 and ds.pixel_array.dtype == np.uint16
        assert ds.DerivationCodeSequence[0].CodeValue == "113061"  # Standard Deviation
        assert ds.DerivationDescription.startswith("Uncertainty map: calibrated standard deviation")
        assert "0.1 x stored value" in ds.DerivationDescription
        assert ds.ContributingEquipmentSequence[-1].ContributionDescription.endswith("uncertainty map")
        assert float(ds.WindowWidth) > 0 and float(ds.WindowCenter) == pytest.approx(float(ds.WindowWidth) / 2)
        assert validate_derived(ds) == []
    back = read_volume(tmp_path / "sd")
    assert back.shape == (2, 32, 32) and back.array.min() >= 0 and np.all(np.isfinite(back.array))


@pytest.mark.parametrize("case, message", [
    ("ensemble 1", "--uncertainty needs --ensemble 2 or more"),
    ("same as OUTPUT", "SD_OUT is OUTPUT"),
    ("inside OUTPUT", "one inside the other"),
    ("exists", "output already exists"),
    ("unknown extension", "unknown output extension"),
])
def test_bad_uncertainty_combinations_fail_in_one_line_before_the_fit(tmp_path: Path, monkeypatch, case: str,
                                                                      message: str) -> None:
    from dd_medical import api

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(api, "denoise", no_fit)
    src = write_image(_noisy(depth=1), tmp_path / "in.nrrd")
    out, sd = tmp_path / "out", tmp_path / "sd"
    settings = TWO
    if case == "ensemble 1":
        settings = [*TINY, "--ensemble", "1"]
    elif case == "same as OUTPUT":
        sd = out
    elif case == "inside OUTPUT":
        sd = out / "sd"
    elif case == "exists":
        sd.mkdir()
        (sd / "old.dcm").write_bytes(b"x")
    else:
        sd = tmp_path / "sd.png"
    code, text = run("denoise", str(src), str(out), "--uncertainty", str(sd), *settings)
    assert code == 2 and message in text and len(text.strip().splitlines()) == 1, text
    assert not out.exists()


# -- reconstruct ---------------------------------------------------------------------------------------------------

def test_reconstruct_writes_the_uncalibrated_spread_referencing_the_reconstruction(tmp_path: Path) -> None:
    code, text = run("reconstruct", "--help")
    assert code == 0 and "NOT calibrated" in text and "--uncertainty" in text
    src = write_image(phantom_volume(depth=1, size=32), tmp_path / "in.nrrd")
    common = ["--simulate", "inpaint", "--iterations", "10", "--channels", "8", "--blocks", "3", "--device", "cpu"]
    code, text = run("reconstruct", str(src), str(tmp_path / "out"), "--uncertainty", str(tmp_path / "sd"), *common)
    assert code == 2 and "needs 2 or more decoders" in text and not (tmp_path / "out").exists()
    code, text = run("reconstruct", str(src), str(tmp_path / "out"), "--uncertainty", str(tmp_path / "sd"), *common,
                     "--ensemble", "2")
    assert code in (0, 3), text  # 3: written, but the reconstruction check flagged this 10-step fit
    assert "not calibrated" in [s for s in text.splitlines() if s.startswith("uncertainty:")][0]
    (recon,) = (pydicom.dcmread(p) for p in (tmp_path / "out").iterdir())
    (ds,) = (pydicom.dcmread(p) for p in (tmp_path / "sd").iterdir())
    assert ds.SeriesDescription == "DD reconstruction spread (SD, HU, not calibrated)"
    assert "not calibrated" in ds.DerivationDescription and "reconstruction (inpaint)" in ds.DerivationDescription
    assert ds.StudyInstanceUID == recon.StudyInstanceUID and ds.FrameOfReferenceUID == recon.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == recon.SeriesInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == recon.SOPInstanceUID  # no DICOM input: its image
    spread = read_volume(tmp_path / "sd")
    assert spread.shape == (1, 32, 32) and spread.array.min() >= 0 and spread.array.max() > 0


# -- the DICOM writer ----------------------------------------------------------------------------------------------

def test_the_stored_representation_is_unsigned_with_a_stated_step(tmp_path: Path) -> None:
    assert sd_step(np.array([0.0, 40.0]), "CT") == CT_STEP
    assert sd_step(np.array([10000.0]), "CT") == 0.2  # beyond 6553.5 HU: the next 1/2/5 step that fits 16 bits
    assert sd_step(np.array([0.03]), "MR") == pytest.approx(5e-7)  # any scale keeps its resolution
    stored, slope, intercept = encode_sd(np.array([[0.0, 0.04, 12.34], [-1e-6, 3.0, 6553.5]]), "CT")
    assert stored.dtype == np.uint16 and (slope, intercept) == ("0.1", "0")
    assert stored.tolist() == [[0, 0, 123], [0, 30, 65535]]
    with pytest.raises(InputError, match="negative"):
        encode_sd(np.array([-1.0]), "CT")

    volume = phantom_volume(depth=2, size=32)
    sd = volume.with_array(np.random.default_rng(1).uniform(0, 80, volume.shape).astype(np.float32))
    files = write_uncertainty_series(sd, tmp_path / "sd", series_description="map", derivation_description="test")
    np.testing.assert_allclose(read_volume(tmp_path / "sd").array, sd.array, atol=CT_STEP / 2 + 1e-4)
    assert len(files) == 2 and "ReferencedSeriesSequence" not in pydicom.dcmread(files[0])  # no denoised series
    other = write_series(phantom_volume(depth=1, size=32), tmp_path / "one", series_description="one slice")
    with pytest.raises(InputError, match="geometry"):
        write_uncertainty_series(sd, tmp_path / "bad", series_description="map", derivation_description="test",
                                 denoised=other[0].parent)
    assert not (tmp_path / "bad").exists()


# -- batch ---------------------------------------------------------------------------------------------------------

def _rows(out: Path) -> list[dict]:
    conn = sqlite3.connect(out / MANIFEST_NAME)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM series ORDER BY key")]
    finally:
        conn.close()


def test_batch_writes_an_uncertainty_series_beside_each_series_and_resumes_with_it(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "in" / "a", depth=2, size=32, seed=1)
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "in"), str(out), *BATCH]
    one = ["1" if a == "2" and BATCH[i - 1] == "--ensemble" else a for i, a in enumerate(BATCH)]
    code, text = run("batch", str(tmp_path / "in"), str(out), *one, "--uncertainty")
    assert code == 2 and "ensemble of 2 or more" in text and not out.exists()

    code, text = run(*args)  # without the map
    assert code in WRITTEN, text
    (row,) = _rows(out)
    assert row["uncertainty_outputs"] is None
    maps = out / SERIES_DIR / uncertainty_folder_name(row["folder"])
    assert not maps.exists()

    code, text = run(*args, "--uncertainty")  # asked for now: the series is redone with its map
    assert code in WRITTEN and "0 skipped" in text, text
    (row,) = _rows(out)
    assert row["attempts"] == 2 and row["uncertainty_outputs"] == 2 and row["uncertainty_checksum"]
    assert row["uncertainty_median"] >= 0 and row["uncertainty_scale"] > 0
    denoised = _by_position(out / SERIES_DIR / row["folder"])
    for z, ds in _by_position(maps).items():
        assert ds.SeriesDescription == "Deep Decoder denoised (dd-medical) uncertainty (SD, HU)"
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == denoised[z].SeriesInstanceUID
        assert ds.ReferencedImageSequence[-1].ReferencedSOPInstanceUID == denoised[z].SOPInstanceUID
    report = (out / "report.html").read_text()
    assert f"{SERIES_DIR}/{maps.name}" in report and f"white {row['uncertainty_scale']:g} HU" in report
    montage = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "report" / f"{row['folder']}.png")))
    assert montage.shape[1] > 4 * montage.shape[0] - 4 * 14  # a fourth tile (and its scale) beside the three

    code, text = run(*args, "--uncertainty")  # complete: skipped
    assert "1 skipped" in text and _rows(out)[0]["attempts"] == 2, text
    sorted(maps.iterdir())[0].unlink()  # the map's series damaged: redone
    code, text = run(*args, "--uncertainty")
    assert "0 skipped" in text and _rows(out)[0]["attempts"] == 3 and len(list(maps.iterdir())) == 2, text
    assert not [p for p in (out / SERIES_DIR).iterdir() if p.name.startswith(".")]


def test_chunks_give_the_same_uncertainty_series_as_the_whole_volume(tmp_path: Path, monkeypatch) -> None:
    """Ray's slice chunks carry the map too; a fake task (values and a map from the slice index) stands in for the
    fit, so the reassembly is compared exactly."""
    def whole(volume, task):
        return volume.array, np.arange(volume.shape[0], dtype=np.float32)[:, None, None] + volume.array * 0 + 2

    def part(volume, task, start, stop):
        values, sd = whole(volume, task)
        return values[start:stop], sd[start:stop]

    monkeypatch.setitem(batch_tasks.TASKS, "denoise", whole)
    monkeypatch.setitem(batch_tasks.SLICE_TASKS, "denoise", part)
    write_phantom_series(tmp_path / "in", depth=3, size=32, seed=2)
    files = tuple(str(p) for p in sorted((tmp_path / "in").iterdir()))
    results = {}
    for name in ("whole", "chunked"):
        task = batch_tasks.SeriesTask(key=name, files=files, output_dir=str(tmp_path / name / SERIES_DIR / "S1"),
                                      montage_path=str(tmp_path / name / "report" / "S1.png"), slices=3,
                                      uncertainty=True, config=FitConfig(ensemble=2))
        if name == "whole":
            results[name] = batch_tasks.process_series(task)
        else:
            chunks = batch_tasks.split_chunks(task, 2)
            assert len(chunks) == 2
            results[name] = batch_tasks.finish_chunks(task, [batch_tasks.process_chunk(c) for c in chunks])
        assert results[name].status == "done" and results[name].uncertainty_outputs == 3, results[name].reason
        np.testing.assert_allclose(read_volume(task.uncertainty_dir).array[:, 0, 0], [2, 3, 4], atol=0.05)
    assert results["whole"].uncertainty_median == results["chunked"].uncertainty_median == 3

    # A task retried (Ray: its worker died) after its outputs were in place finds them through its receipt, the map
    # included; a damaged map makes it redo the series.
    task = batch_tasks.SeriesTask(key="retried", files=files, output_dir=str(tmp_path / "r" / SERIES_DIR / "S1"),
                                  montage_path=str(tmp_path / "r" / "report" / "S1.png"), uncertainty=True,
                                  config=FitConfig(ensemble=2), token="t1")
    assert batch_tasks.process_series(task).uncertainty_outputs == 3
    earlier = batch_tasks.completed_earlier(task)
    assert earlier is not None and earlier.uncertainty_outputs == 3 and earlier.uncertainty_checksum
    sorted(Path(task.uncertainty_dir).iterdir())[0].unlink()
    assert batch_tasks.completed_earlier(task) is None


def test_an_older_manifest_gets_the_uncertainty_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE series (key TEXT PRIMARY KEY, series_uid TEXT NOT NULL, split_key TEXT NOT NULL,
            folder TEXT NOT NULL UNIQUE, modality TEXT NOT NULL, n_files INTEGER NOT NULL,
            source_digest TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')), reason TEXT NOT NULL DEFAULT '',
            task TEXT NOT NULL, config TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
            slices INTEGER, outputs INTEGER, checksum TEXT, seconds_read REAL, seconds_task REAL,
            seconds_write REAL, noise_before REAL, noise_after REAL, excluded TEXT NOT NULL DEFAULT '[]',
            updated TEXT NOT NULL);
        INSERT INTO series (key, series_uid, split_key, folder, modality, n_files, source_digest, status, task,
            outputs, checksum, updated) VALUES ('k', '1.2', 's', 'S1', 'CT', 2, 'd', 'done', 'denoise', 2, 'c', 'now');
    """)
    conn.commit()
    conn.close()
    manifest = Manifest(path)
    try:
        (row,) = manifest.rows()
        assert row["status"] == "done" and row["checksum"] == "c" and row["uncertainty_outputs"] is None
        assert batch_tasks.verify_outputs(row, tmp_path, uncertainty=False) == "output folder is missing"
        result = batch_tasks.SeriesResult(key="k", status="check", outputs=2, checksum="c", uncertainty_outputs=2,
                                          uncertainty_checksum="u", uncertainty_median=1.5, uncertainty_scale=4.0)
        manifest.record(result)  # the new status and the new columns both take values
        row = manifest.get("k")
        assert (row["status"], row["uncertainty_outputs"], row["uncertainty_scale"]) == ("check", 2, 4.0)
    finally:
        manifest.close()


def test_run_batch_refuses_a_map_without_an_ensemble_before_reading(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "in", depth=1, size=32)
    with pytest.raises(InputError, match="ensemble"):
        run_batch(tmp_path / "in", tmp_path / "out", config=FitConfig(ensemble=1), device="cpu", uncertainty=True)
    assert not (tmp_path / "out").exists()
