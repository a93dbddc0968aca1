"""dd_medical.io: DICOM series in and derived series out, NIfTI/NRRD/MetaImage, atomic outputs, bad inputs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import dd_medical.io.dicom as dicom_module
from dd_medical.errors import InputError
from dd_medical.io import (
    atomic_output_dir,
    atomic_output_file,
    read_image,
    read_series,
    read_volume,
    scan_dicom,
    validate_derived,
    write_image,
    write_series,
)
from dd_medical.io._compat import PYDICOM_MAJOR, apply_modality_lut, save, set_pixel_data
from dd_medical.phantom import ct_phantom, phantom_volume
from dd_medical.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SERIES = REPO / "sample_data" / "ct_phantom"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
CT_SMALL_PATIENT_NAME = "CompressedSamples"
#: JPEG 2000 and JPEG-LS encoders came with pydicom 3; on pydicom 2.4 (3D Slicer's) a derived series of such a source
#: is written uncompressed (tested below for both majors).
NEEDS_PYDICOM_3 = pytest.mark.skipif(PYDICOM_MAJOR < 3, reason="pydicom 2 has no JPEG 2000 encoder")


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def _oblique_ct(depth: int = 5, size: int = 48, seed: int = 0) -> Volume:
    """A small CT volume (phantom HU) with an oblique, non-trivial geometry."""
    return Volume(
        array=ct_phantom(depth, size, seed),
        spacing=(0.8, 0.7, 2.0),
        origin=(10.5, -20.25, 30.0),
        direction=tuple(_rotation(0.2, -0.1, 0.5).ravel()),
        modality="CT",
    )


def _hashes(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _assert_same_geometry(a: Volume, b: Volume, tol: float = 1e-4) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


def _sitk_series(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)


@pytest.fixture()
def source_series(tmp_path: Path) -> tuple[Volume, list[Path]]:
    """An oblique CT series written from scratch into tmp_path/source, and the volume it came from."""
    volume = _oblique_ct()
    files = write_series(volume, tmp_path / "source", series_description="source series", series_number=7)
    return volume, files


def _require_shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"shared test data not available: {folder} (integration data lives beside the repository)")
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Derived series round trip


def test_series_from_scratch_keeps_geometry_and_values(source_series: tuple[Volume, list[Path]]) -> None:
    volume, files = source_series
    assert [f.name for f in files] == [f"IM{k:04d}.dcm" for k in range(1, 6)]
    back = read_volume(files[0].parent)
    assert back.shape == volume.shape
    assert back.modality == "CT"
    _assert_same_geometry(back, volume)
    np.testing.assert_allclose(back.array, volume.array, atol=0.5 + 1e-4)  # slope 1: HU rounded to integers
    assert back.source_files == files
    ds = pydicom.dcmread(files[0])
    assert ds.PatientID == "ANONYMOUS" and str(ds.PatientName) == ""
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.SeriesNumber == 7
    assert ds.RescaleType == "HU"


def test_derived_series_round_trip(source_series: tuple[Volume, list[Path]], tmp_path: Path) -> None:
    _, source_files = source_series
    before = _hashes(source_files)
    source = read_volume(source_files[0].parent)
    rng = np.random.default_rng(1)
    denoised = source.array + rng.uniform(-30, 30, source.shape).astype(np.float32)

    out = write_series(
        source.with_array(denoised),
        tmp_path / "derived",
        series_description="denoised " + "x" * 100,
        derivation_description="Deep Decoder denoising",
    )
    back = read_volume(tmp_path / "derived")

    assert _hashes(source_files) == before, "the source files must never change"
    assert back.shape == source.shape
    _assert_same_geometry(back, source)
    np.testing.assert_allclose(back.array, denoised, atol=0.5 + 1e-3)
    assert back.metadata["SeriesInstanceUID"] != source.metadata["SeriesInstanceUID"]
    assert back.metadata["StudyInstanceUID"] == source.metadata["StudyInstanceUID"]
    assert back.metadata["FrameOfReferenceUID"] == source.metadata["FrameOfReferenceUID"]
    assert back.metadata["TransferSyntaxUID"] == ExplicitVRLittleEndian

    series_uids = set()
    for out_file, src_file in zip(out, source.source_files, strict=True):
        ds, src = pydicom.dcmread(out_file), pydicom.dcmread(src_file)
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert list(ds.ImageType)[2] == "AXIAL"
        assert ds.SeriesNumber == 1007  # source + 1000
        assert len(ds.SeriesDescription) == 64
        assert ds.DerivationDescription == "Deep Decoder denoising"
        assert ds.DerivationCodeSequence[0].CodeValue == "113087"
        reference = ds.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == src.SOPClassUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert ds.BurnedInAnnotation == "NO"
        assert ds.ImagePositionPatient == src.ImagePositionPatient
        assert ds.PixelSpacing == src.PixelSpacing
        assert ds.PatientID == src.PatientID and ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 1
        assert "LargestImagePixelValue" not in ds and "NumberOfFrames" not in ds
        assert ds.ContentDate and ds.ContentTime
        assert validate_derived(ds) == []
    assert len(series_uids) == 1 and series_uids != {source.metadata["SeriesInstanceUID"]}


def test_write_series_uses_org_root_and_2_25_by_default(tmp_path: Path) -> None:
    volume = phantom_volume(depth=2, size=32)
    default = pydicom.dcmread(write_series(volume, tmp_path / "a", series_description="a")[0])
    assert default.SOPInstanceUID.startswith("2.25.")
    rooted = pydicom.dcmread(write_series(volume, tmp_path / "b", series_description="b", org_root="1.2.826.0.1")[0])
    for uid in (rooted.SOPInstanceUID, rooted.SeriesInstanceUID, rooted.StudyInstanceUID):
        assert uid.startswith("1.2.826.0.1.") and uid.is_valid
    with pytest.raises(InputError, match="org_root"):
        write_series(volume, tmp_path / "c", series_description="c", org_root="1.2.abc")


def test_write_series_refuses_non_empty_output_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    volume = phantom_volume(depth=2, size=32)
    (tmp_path / "empty").mkdir()
    assert len(write_series(volume, tmp_path / "empty", series_description="ok")) == 2
    with pytest.raises(InputError, match="not empty"):
        write_series(volume, tmp_path / "empty", series_description="again")
    bad = volume.with_array(np.full(volume.shape, np.nan, dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        write_series(bad, tmp_path / "never", series_description="nan")
    broken = volume.with_array(volume.array)
    broken.source_files = [tmp_path / "missing.dcm"] * volume.shape[0]
    with pytest.raises(InputError, match="missing.dcm"):
        write_series(broken, tmp_path / "never", series_description="missing source")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], "no partial or temporary output may remain"


def test_rescale_fits_values_outside_the_int16_range(tmp_path: Path) -> None:
    shape = (2, 32, 32)
    wide = Volume(np.linspace(-5000, 90000, np.prod(shape), dtype=np.float32).reshape(shape), modality="MR")
    narrow = Volume(np.linspace(0.0, 1.0, np.prod(shape), dtype=np.float32).reshape(shape), modality="MR")
    for name, volume in (("wide", wide), ("narrow", narrow)):
        files = write_series(volume, tmp_path / name, series_description=name)
        ds = pydicom.dcmread(files[0])
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        slope = float(ds.RescaleSlope)
        back = read_volume(tmp_path / name)
        np.testing.assert_allclose(back.array, volume.array, atol=slope / 2 + 1e-6 * np.abs(volume.array).max())


def test_secondary_capture_for_other_modalities_keeps_geometry(tmp_path: Path) -> None:
    volume = _oblique_ct(depth=3, size=32)
    volume.modality = "OT"
    files = write_series(volume, tmp_path / "sc", series_description="Ünïcode description")
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.SeriesDescription == "Ünïcode description"
    back = read_volume(tmp_path / "sc")
    _assert_same_geometry(back, volume)


# ----------------------------------------------------------------------------------------------------------------
# pydicom's CT_small.dcm


def test_ct_small_reads_as_one_slice_in_hu(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    volume = read_volume(CT_SMALL)
    assert volume.shape == (1, 128, 128)
    np.testing.assert_array_equal(volume.array[0], apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert volume.spacing[:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    assert volume.origin == tuple(float(v) for v in ds.ImagePositionPatient)
    assert volume.source_files == [CT_SMALL]
    assert not any(CT_SMALL_PATIENT_NAME in value for value in volume.metadata.values())
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(volume.metadata)

    before = _hashes([CT_SMALL])
    files = write_series(volume, tmp_path / "derived", series_description="CT_small derived")
    assert _hashes([CT_SMALL]) == before
    back = read_volume(files[0])
    np.testing.assert_array_equal(back.array, volume.array)  # integer HU: exact at slope 1
    _assert_same_geometry(back, volume)
    derived = pydicom.dcmread(files[0])
    assert derived.SeriesNumber == 1001 and derived.PatientID == ds.PatientID
    assert not [elem for elem in derived if elem.tag.is_private]
    assert "PixelPaddingValue" not in derived  # stored-value attribute, stale after re-encoding


def test_implicit_vr_source_gives_explicit_vr_derived(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    save(ds, tmp_path / "implicit.dcm")  # in the file meta's Implicit VR Little Endian
    volume = read_volume(tmp_path / "implicit.dcm")
    files = write_series(volume, tmp_path / "out", series_description="from implicit")
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(read_volume(files[0]).array, volume.array)


# ----------------------------------------------------------------------------------------------------------------
# Transfer syntax of derived series (issue 31): a lossless source's compression is kept, a lossy one is not re-used


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", pytest.param("MR_small_jp2klossless.dcm", marks=NEEDS_PYDICOM_3)])
def test_a_lossless_source_keeps_its_compression(tmp_path: Path, name: str) -> None:
    source = pydicom.dcmread(get_testdata_file(name))
    volume = read_volume(get_testdata_file(name))
    denoised = volume.array * 0.5 + 7
    files = write_series(volume.with_array(denoised), tmp_path / "out", series_description="kept syntax",
                         derivation_description="halved (test)")
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert ds.get("LossyImageCompression", "00") == "00"
    assert validate_derived(ds) == []
    np.testing.assert_allclose(read_volume(files[0]).array, denoised, atol=float(ds.RescaleSlope) / 2 + 1e-4)


def test_a_lossy_source_is_not_re_encoded_lossily(tmp_path: Path) -> None:
    volume = read_volume(get_testdata_file("MR2_J2KI.dcm"))  # JPEG 2000 (irreversible), LossyImageCompression 01
    files = write_series(volume, tmp_path / "out", series_description="from lossy")
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.LossyImageCompression == "01"
    np.testing.assert_allclose(read_volume(files[0]).array, volume.array, atol=float(ds.RescaleSlope) / 2 + 1e-3)


def test_a_lossless_source_without_an_encoder_is_written_uncompressed_and_said_once(tmp_path: Path, monkeypatch,
                                                                                     caplog) -> None:
    monkeypatch.setattr("dd_medical.io.transfer_syntax._said", set())
    monkeypatch.setattr("dd_medical.io.transfer_syntax.encoder_problem",
                        lambda uid: "no encoder installed: pip install pyjpegls" if uid == JPEGLSLossless else "")
    volume = read_volume(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    caplog.set_level("WARNING", logger="dd_medical")
    for k in range(2):
        files = write_series(volume, tmp_path / f"out{k}", series_description="from JPEG-LS",
                             derivation_description="identity (test)")
        ds = pydicom.dcmread(files[0])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and validate_derived(ds) == []
    said = [r.getMessage() for r in caplog.records if "JPEG-LS" in r.getMessage()]
    assert len(said) == 1 and "Explicit VR Little Endian" in said[0] and "pyjpegls" in said[0]


def test_on_pydicom_2_a_jpeg2000_source_is_written_uncompressed_and_said_once(tmp_path: Path, monkeypatch,
                                                                            caplog) -> None:
    """Issue 31 (3D Slicer bundles pydicom 2.4): without pydicom 3's JPEG 2000 encoder, a JPEG 2000 Lossless source
    gives an Explicit VR Little Endian series, said once in the log; choosing jpeg2000-lossless is refused before
    writing, naming pydicom>=3. On pydicom 2 this is the real behaviour; on pydicom 3 the missing encoder is faked."""
    import dd_medical.io.transfer_syntax as transfer_syntax

    if PYDICOM_MAJOR >= 3:
        real = transfer_syntax.encoder_available
        monkeypatch.setattr(transfer_syntax, "PYDICOM_MAJOR", 2)
        monkeypatch.setattr(transfer_syntax, "encoder_available",
                            lambda uid: None if uid in (JPEG2000Lossless, JPEGLSLossless) else real(uid))
    monkeypatch.setattr(transfer_syntax, "_said", set())
    caplog.set_level("WARNING", logger="dd_medical")
    volume = read_volume(get_testdata_file("MR_small_jp2klossless.dcm"))
    for k in range(2):
        files = write_series(volume, tmp_path / f"out{k}", series_description="from JPEG 2000",
                             derivation_description="identity (test)")
        ds = pydicom.dcmread(files[0])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and validate_derived(ds) == []
        np.testing.assert_allclose(read_volume(files[0]).array, volume.array, atol=float(ds.RescaleSlope) / 2)
    said = [r.getMessage() for r in caplog.records if "JPEG 2000" in r.getMessage()]
    assert len(said) == 1 and "pydicom>=3" in said[0] and "Explicit VR Little Endian" in said[0]
    with pytest.raises(InputError, match=r"jpeg2000-lossless .*no encoder for it \(pydicom>=3 has\)"):
        write_series(volume, tmp_path / "chosen", series_description="x", transfer_syntax="jpeg2000-lossless")
    assert not (tmp_path / "chosen").exists()
    assert write_series(volume, tmp_path / "rle", series_description="rle", transfer_syntax="rle")  # RLE: both


@pytest.mark.parametrize(("choice", "expected"), [
    ("rle", RLELossless), pytest.param("jpeg2000-lossless", JPEG2000Lossless, marks=NEEDS_PYDICOM_3),
    pytest.param(str(JPEG2000Lossless), JPEG2000Lossless, marks=NEEDS_PYDICOM_3),
    ("explicit", ExplicitVRLittleEndian), ("auto", ExplicitVRLittleEndian),
])
def test_the_transfer_syntax_can_be_chosen(tmp_path: Path, choice: str, expected: str) -> None:
    volume = read_volume(CT_SMALL)  # Explicit VR Little Endian
    files = write_series(volume, tmp_path / "out", series_description="chosen", transfer_syntax=choice,
                         derivation_description="identity (test)")
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == expected and validate_derived(ds) == []
    np.testing.assert_array_equal(read_volume(files[0]).array, volume.array)


@pytest.mark.parametrize(("choice", "message"), [
    ("jpeg2000", "'jpeg2000' is not offered"),
    ("1.2.840.10008.1.2.4.91", r"JPEG 2000 Image Compression\) is not offered.*written losslessly"),
    ("jpegls-lossless", "no encoder installed: pip install pyjpegls"),
])
def test_an_unknown_lossy_or_unavailable_transfer_syntax_is_refused_before_writing(tmp_path: Path, monkeypatch,
                                                                                   choice: str, message: str) -> None:
    monkeypatch.setattr("dd_medical.io.transfer_syntax.encoder_problem",
                        lambda uid: "no encoder installed: pip install pyjpegls" if uid == JPEGLSLossless else "")
    with pytest.raises(InputError, match=message) as err:
        write_series(read_volume(CT_SMALL), tmp_path / "out", series_description="x", transfer_syntax=choice)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# NIfTI / NRRD / MetaImage


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_image_round_trip_keeps_values_and_geometry(tmp_path: Path, suffix: str) -> None:
    volume = _oblique_ct(depth=4, size=32)
    path = write_image(volume, tmp_path / f"volume{suffix}")
    assert path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files must be gone"
    back = read_image(path)
    np.testing.assert_array_equal(back.array, volume.array)
    _assert_same_geometry(back, volume, tol=1e-4)
    with pytest.raises(InputError, match="exists"):
        write_image(volume, path)
    write_image(volume.with_array(volume.array + 1), path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, volume.array + 1)


def test_write_image_rejects_sheared_geometry_for_nifti_only(tmp_path: Path) -> None:
    c, s = np.cos(np.deg2rad(18.5)), np.sin(np.deg2rad(18.5))  # gantry tilt: column cosine tilted, z unchanged
    sheared = Volume(np.zeros((3, 8, 8), np.float32), direction=(1, 0, 0, 0, c, 0, 0, -s, 1), modality="CT")
    with pytest.raises(InputError, match="NIfTI"):
        write_image(sheared, tmp_path / "tilt.nii.gz")
    _assert_same_geometry(read_image(write_image(sheared, tmp_path / "tilt.nrrd")), sheared)
    with pytest.raises(InputError, match="format"):
        write_image(sheared, tmp_path / "tilt.png")


def test_read_image_2d_becomes_one_slice_and_rejects_rgb_and_4d(tmp_path: Path) -> None:
    image2d = sitk.GetImageFromArray(np.arange(20, dtype=np.float32).reshape(4, 5))
    image2d.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image2d, str(tmp_path / "slice.nrrd"))
    volume = read_image(tmp_path / "slice.nrrd")
    assert volume.shape == (1, 4, 5) and volume.spacing == (0.5, 0.25, 1.0)

    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="rgb.mha.*components"):
        read_image(tmp_path / "rgb.mha")

    frames = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "time.nii.gz"))
    with pytest.raises(InputError, match="time.nii.gz.*4D"):
        read_volume(tmp_path / "time.nii.gz")


def test_atomic_output_file_keeps_the_suffix_and_cleans_up(tmp_path: Path) -> None:
    with atomic_output_file(tmp_path / "a.b.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path and not tmp.exists()
        tmp.write_bytes(b"data")
    assert (tmp_path / "a.b.nii.gz").read_bytes() == b"data"
    with pytest.raises(RuntimeError), atomic_output_file(tmp_path / "b.nrrd") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.b.nii.gz"]


def test_atomic_output_dir_replaces_only_when_asked(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_output_dir(final) as tmp:
        (tmp / "one").write_text("1")
    with pytest.raises(InputError, match="not empty"), atomic_output_dir(final):
        pass
    with atomic_output_dir(final, overwrite=True) as tmp:
        (tmp / "two").write_text("2")
    assert [p.name for p in final.iterdir()] == ["two"]
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "failed") as tmp:
        (tmp / "x").write_text("x")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------------------------------------------
# Sample series and discovery


def test_sample_series_reads_like_simpleitk() -> None:
    volume = read_volume(SAMPLE_SERIES)
    assert volume.shape == (8, 128, 128)
    assert volume.modality == "CT"
    np.testing.assert_allclose(volume.spacing, (0.7, 0.7, 2.5), atol=1e-6)
    np.testing.assert_allclose(volume.origin, (-44.45, -44.45, 0.0), atol=1e-6)
    assert volume.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(volume.array, _sitk_series(SAMPLE_SERIES))
    assert [p.name for p in volume.source_files] == [f"IM{k:04d}.dcm" for k in range(1, 9)]


def test_slices_sorted_by_position_not_instance_number_or_name(tmp_path: Path) -> None:
    volume = _oblique_ct(depth=6, size=32)
    files = write_series(volume, tmp_path / "written", series_description="order")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(3)
    for new_index, k in enumerate(rng.permutation(len(files))):
        ds = pydicom.dcmread(files[k])
        ds.InstanceNumber = int(len(files) - k)  # reversed numbering
        save(ds, shuffled / f"{new_index:02d}")  # random names, no extension
    back = read_volume(shuffled)
    np.testing.assert_allclose(back.array, read_volume(tmp_path / "written").array)
    _assert_same_geometry(back, volume)


def test_bare_dataset_without_preamble_or_file_meta(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    del ds.file_meta
    ds.preamble = None
    # An old ACR-NEMA style file: the data set alone, in Implicit VR Little Endian.
    save(ds, tmp_path / "bare", implicit_vr=True, little_endian=True, file_format=False)
    volume = read_volume(tmp_path / "bare")
    assert volume.metadata["TransferSyntax"] == "Implicit VR Little Endian"
    np.testing.assert_array_equal(volume.array, read_volume(CT_SMALL).array)
    files = write_series(volume, tmp_path / "out", series_description="from bare")
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_folder_tree_with_several_series_and_non_image_files(tmp_path: Path) -> None:
    write_series(phantom_volume(depth=3, size=32, seed=1), tmp_path / "a" / "series1", series_description="1")
    write_series(_oblique_ct(depth=2, size=32), tmp_path / "b", series_description="2")
    (tmp_path / "LICENSE").write_text("not DICOM")
    _sr_document(tmp_path / "a" / "report.dcm")

    volumes = read_series(tmp_path)
    assert sorted(v.shape for v in volumes) == [(2, 32, 32), (3, 32, 32)]
    scan = scan_dicom(tmp_path)
    assert {p.path.name for p in scan.skipped} == {"LICENSE", "report.dcm"}
    with pytest.raises(InputError, match="2 image series") as err:
        read_volume(tmp_path)
    for volume in volumes:
        assert volume.metadata["SeriesInstanceUID"] in str(err.value)
    assert read_volume(tmp_path / "a").shape == (3, 32, 32)  # the SR and LICENSE are skipped


def test_unsupported_series_are_skipped_by_read_series(tmp_path: Path) -> None:
    write_series(phantom_volume(depth=2, size=32), tmp_path / "grey", series_description="grey")
    _rgb_image(tmp_path / "rgb" / "screen.dcm")
    assert [v.shape for v in read_series(tmp_path)] == [(2, 32, 32)]
    with pytest.raises(InputError, match="screen.dcm.*colour"):
        read_volume(tmp_path / "rgb" / "screen.dcm")
    with pytest.raises(InputError, match="no supported DICOM image series"):
        read_series(tmp_path / "rgb")


def test_slices_at_the_same_position_are_refused(tmp_path: Path) -> None:
    files = write_series(phantom_volume(depth=2, size=32), tmp_path / "series", series_description="s")
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    save(ds, tmp_path / "series" / "IM0003.dcm")
    with pytest.raises(InputError, match="3 slices at 2 distinct positions"):
        read_volume(tmp_path / "series")


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def _sr_document(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "SR", generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(ds, path)


def _rgb_image(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality, ds.SeriesInstanceUID = SecondaryCaptureImageStorage, "OT", generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    set_pixel_data(ds, np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(ds, path)


def test_missing_path_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere.*does not exist"):
        read_volume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no files"):
        read_volume(tmp_path / "empty")
    with pytest.raises(InputError, match="empty.*no files"):
        read_series(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello\n" * 100)
    with pytest.raises(InputError, match="text.*no DICOM image"):
        read_volume(tmp_path / "text")
    with pytest.raises(InputError, match="notes.txt.*not a DICOM file"):
        read_volume(tmp_path / "text" / "notes.txt")


@pytest.mark.parametrize("keep_bytes", [140, 1500, -1000])
def test_truncated_dicom_file_names_the_file(tmp_path: Path, keep_bytes: int) -> None:
    data = CT_SMALL.read_bytes()
    truncated = tmp_path / "series" / "truncated.dcm"
    truncated.parent.mkdir()
    truncated.write_bytes(data[:keep_bytes])
    with pytest.raises(InputError, match="truncated.dcm.*(truncated|corrupt)") as err:
        read_volume(truncated)
    assert CT_SMALL_PATIENT_NAME not in str(err.value)
    assert "\n" not in str(err.value)
    shutil.copy(CT_SMALL, tmp_path / "series" / "good.dcm")
    with pytest.raises(InputError, match="truncated.dcm"):  # in a folder too: never a silently missing slice
        read_volume(tmp_path / "series")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    save(ds, tmp_path / "no_pixels.dcm")
    with pytest.raises(InputError, match="no_pixels.dcm.*without pixel data"):
        read_volume(tmp_path / "no_pixels.dcm")
    _sr_document(tmp_path / "sr" / "report.dcm")
    with pytest.raises(InputError, match="report.dcm.*not an image"):
        read_volume(tmp_path / "sr" / "report.dcm")
    with pytest.raises(InputError, match="sr.*no DICOM image"):
        read_volume(tmp_path / "sr")


def test_undecodable_pixel_data_names_file_and_transfer_syntax(tmp_path: Path, monkeypatch) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    save(ds, tmp_path / "broken_j2k.dcm")
    with pytest.raises(InputError, match="broken_j2k.dcm.*JPEG 2000.*corrupt"):
        read_volume(tmp_path / "broken_j2k.dcm")

    monkeypatch.setattr(dicom_module, "decoder_available", lambda uid: False)
    with pytest.raises(InputError, match="JPEG 2000 Image Compression.*install pylibjpeg-openjpeg"):
        read_volume(tmp_path / "broken_j2k.dcm")


# ----------------------------------------------------------------------------------------------------------------
# Real CT from ../shared/data (skipped when absent)


@pytest.fixture(scope="module")
def gantry_tilt() -> tuple[Path, Volume]:
    folder = _require_shared("ct_head_gantry_tilt")
    return folder, read_volume(folder)


def test_gantry_tilt_series_sorted_by_position_with_sheared_geometry(gantry_tilt: tuple[Path, Volume]) -> None:
    folder, volume = gantry_tilt
    assert volume.shape == (28, 512, 512)
    positions = np.array(
        [pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient for f in volume.source_files],
        dtype=np.float64,
    )
    direction = np.asarray(volume.direction).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    assert np.all(np.diff(positions @ normal) > 0), "slices must be ordered along the slice normal"
    np.testing.assert_allclose(volume.origin, positions[0])
    np.testing.assert_allclose(direction[:, 2], [0.0, 0.0, 1.0], atol=1e-6)  # table motion, not the normal
    assert abs(direction[:, 2] @ normal) < 0.99  # tilted: the slice direction is not the normal
    steps = np.diff(positions[:, 2])
    assert volume.spacing[2] == pytest.approx(np.median(steps), abs=1e-6)
    assert volume.metadata["SliceSpacingUniform"] == "no"
    for k in (0, 13, 14, 27):  # around the change of slice spacing
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(volume.source_files[k])))[0]
        np.testing.assert_array_equal(volume.array[k], expected)
    assert sorted(volume.source_files) == sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def test_gantry_tilt_series_shuffled_input_order_gives_the_same_volume(gantry_tilt: tuple[Path, Volume]) -> None:
    _, volume = gantry_tilt
    files = list(volume.source_files)
    np.random.default_rng(0).shuffle(files)
    again = dicom_module.load_series(files[:6])
    assert again.source_files == sorted(files[:6], key=volume.source_files.index)


def test_gantry_tilt_derived_series_keeps_every_slice_position(gantry_tilt: tuple[Path, Volume], tmp_path: Path):
    _, volume = gantry_tilt
    before = _hashes(volume.source_files[:3])
    files = write_series(volume, tmp_path / "derived", series_description="tilt derived",
                         derivation_description="identity (test)")
    back = read_volume(tmp_path / "derived")
    _assert_same_geometry(back, volume)
    np.testing.assert_array_equal(back.array, volume.array)
    for out_file, src_file in zip(files, volume.source_files, strict=True):
        out, src = (pydicom.dcmread(f, stop_before_pixels=True) for f in (out_file, src_file))
        assert out.ImagePositionPatient == src.ImagePositionPatient
        assert out.ImageOrientationPatient == src.ImageOrientationPatient
        assert out.PixelSpacing == src.PixelSpacing and out.SliceThickness == src.SliceThickness
    assert validate_derived(pydicom.dcmread(files[0])) == []
    assert _hashes(volume.source_files[:3]) == before


def test_jpeg2000_series_reads_like_simpleitk_and_skips_licence(tmp_path: Path) -> None:
    folder = _require_shared("ct_body_j2k")
    volume = read_volume(folder)
    assert volume.shape == (20, 512, 512)
    assert volume.metadata["TransferSyntax"].startswith("JPEG 2000")
    np.testing.assert_array_equal(volume.array, _sitk_series(folder))
    assert [s.path.name for s in scan_dicom(folder).skipped] == ["LICENSE"]

    # Anonymised source with empty Study/Series/SOP UIDs: the derived series still gets valid ones.
    files = write_series(volume, tmp_path / "derived", series_description="j2k derived")
    ds = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID and ds.SOPInstanceUID and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID  # taken from the file meta information
    assert len({pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}) == 1
    np.testing.assert_array_equal(read_volume(tmp_path / "derived").array, volume.array)


@NEEDS_PYDICOM_3
def test_jpeg2000_series_stays_jpeg2000_lossless_and_about_as_small(tmp_path: Path) -> None:
    """Issue 31: a 3 MB JPEG 2000 series came out as 10 MB uncompressed; now its lossless compression is kept."""
    folder = _require_shared("ct_body_j2k")
    volume = read_volume(folder)
    files = write_series(volume, tmp_path / "derived", series_description="j2k derived",
                         derivation_description="identity (test)")
    source_bytes = sum(p.stat().st_size for p in volume.source_files)
    derived_bytes = sum(p.stat().st_size for p in files)
    assert derived_bytes < 1.5 * source_bytes < 0.5 * volume.array.size * 2  # uncompressed int16 is ~3.4x
    for path in files[:3]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless and validate_derived(ds) == []
    np.testing.assert_array_equal(read_volume(tmp_path / "derived").array, volume.array)  # lossless


def test_nifti_ct_written_as_new_dicom_series(tmp_path: Path) -> None:
    path = _require_shared("ct_body_j2k_nifti") / "example_ct_sm.nii.gz"
    volume = read_volume(path)
    volume.modality = "CT"
    assert volume.shape[0] > 1 and volume.source_files == []
    write_series(volume, tmp_path / "dicom", series_description="from NIfTI")
    back = read_volume(tmp_path / "dicom")
    _assert_same_geometry(back, volume)
    np.testing.assert_allclose(back.array, volume.array, atol=0.5 + 1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Derived-series details: stale values, lossy flag, MR values, replacing an output


def test_mr_source_keeps_stored_values_and_drops_stale_pixel_range(tmp_path: Path) -> None:
    mr = Path(get_testdata_file("MR_small.dcm"))
    source = pydicom.dcmread(mr)
    source.LossyImageCompression = "01"
    save(source, tmp_path / "mr.dcm")
    volume = read_volume(tmp_path / "mr.dcm")
    np.testing.assert_array_equal(volume.array[0], source.pixel_array)  # MR: the stored value range, unscaled
    files = write_series(volume.with_array(volume.array * 0.5), tmp_path / "out", series_description="mr half",
                         derivation_description="halved (test)")
    ds = pydicom.dcmread(files[0])
    assert validate_derived(ds) == []
    assert ds.LossyImageCompression == "01", "a lossy history is kept"
    assert "SmallestImagePixelValue" not in ds and "LargestImagePixelValue" not in ds
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    np.testing.assert_allclose(read_volume(files[0]).array, volume.array * 0.5, atol=float(ds.RescaleSlope) / 2)


def test_write_series_overwrite_replaces_the_whole_folder(tmp_path: Path) -> None:
    volume = phantom_volume(depth=2, size=32)
    first = write_series(volume, tmp_path / "out", series_description="one")
    (tmp_path / "out" / "stray.txt").write_text("x")
    second = write_series(volume.with_array(volume.array + 10), tmp_path / "out", series_description="two",
                          overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in second]
    assert [p.name for p in first] == [p.name for p in second]
    np.testing.assert_allclose(read_volume(tmp_path / "out").array, volume.array + 10, atol=0.5 + 1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
