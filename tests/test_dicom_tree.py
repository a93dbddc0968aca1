"""Discovery in a messy export tree: studies, series split by size/echo/acquisition, enhanced multi-frame objects,
SR and RT objects, truncated files, files without pixels, duplicated SOPInstanceUIDs; pydicom's test files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from dd_medical.errors import InputError
from dd_medical.io import load_series, read_volume, scan_dicom, validate_derived, write_series
from dd_medical.io._compat import PYDICOM_MAJOR, save, set_pixel_data
from dd_medical.io.dicom_write import ORIGINAL_ONLY_KEYWORDS
from dd_medical.phantom import ct_phantom, phantom_volume
from dd_medical.volume import Volume

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
SECRET_NAME = "Secret^Patient"  # written into every tree file: must never appear in messages


def _resave(path: Path, out: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.parent.mkdir(parents=True, exist_ok=True)
    save(ds, out)
    return out


def enhanced_ct(path: Path, depth: int = 3, size: int = 32, seed: int = 5, study_uid: str | None = None) -> np.ndarray:
    """An Enhanced CT Image object (one file, ``depth`` frames in reversed z order, per-frame positions, shared
    orientation/spacing/rescale); returns the HU volume in increasing z."""
    hu = ct_phantom(depth, size, seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = SECRET_NAME, "SECRET-ID-3", "CT"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240101", "120000", 9, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    stored = np.rint(hu[::-1] + 1024).astype(np.uint16)  # frames stored top to bottom
    set_pixel_data(ds, stored, "MONOCHROME2", 16)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.7], 2.5
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -1024, 1, "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(depth):
        frame, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [-10.0, -10.0, 2.5 * (depth - 1 - k)]
        frame.PlanePositionSequence = Sequence([plane])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(ds, path)
    return hu


def build_tree(root: Path) -> dict[str, object]:
    """A small export tree: 2 studies, 3 single-frame series (one with a duplicated and one with a truncated
    slice), a series whose slices differ in size (-> 2 volumes), an enhanced CT, an SR, an RT structure set, a
    truncated file, a file without pixel data and a licence text. Returns what is expected of it."""
    # Study A: series 1 and its sibling series 2 (same study, new series UID)
    a1 = write_series(phantom_volume(3, 32, seed=1), root / "studyA" / "s1", series_description="s1")
    source = read_volume(root / "studyA" / "s1")
    write_series(source.with_array(source.array + 5), root / "studyA" / "s2", series_description="s2")
    study_a = str(pydicom.dcmread(a1[0]).StudyInstanceUID)
    # Study B: series 3 with an extra slice truncated in its pixel data; the enhanced CT
    b3 = write_series(phantom_volume(3, 32, seed=3), root / "studyB" / "s3", series_description="s3")
    study_b = str(pydicom.dcmread(b3[0]).StudyInstanceUID)
    extra = _resave(b3[-1], root / "studyB" / "s3" / "IM0004.dcm", SOPInstanceUID=generate_uid(),
                    ImagePositionPatient=[-10.85, -10.85, 7.5 + 2.5])
    extra.write_bytes(extra.read_bytes()[:-500])
    enhanced_ct(root / "studyB" / "enhanced" / "MF0001", study_uid=study_b)
    # A series whose slices differ in size (same SeriesInstanceUID): 2 slices 32x32 + 1 slice 48x48
    mixed = write_series(phantom_volume(2, 32, seed=4), root / "studyB" / "mixed", series_description="mixed")
    big = write_series(phantom_volume(1, 48, seed=4), root / "tmp_big", series_description="big")
    mixed_uid = str(pydicom.dcmread(mixed[0]).SeriesInstanceUID)
    for path in mixed:
        _resave(path, path, StudyInstanceUID=study_b)
    _resave(big[0], root / "studyB" / "mixed" / "IM0003.dcm", SeriesInstanceUID=mixed_uid, StudyInstanceUID=study_b)
    shutil.rmtree(root / "tmp_big")
    # Duplicate SOPInstanceUID: the same slice of series 1 exported twice
    shutil.copy(a1[1], root / "studyA" / "copy_of_s1_slice2")
    # Stray files
    shutil.copy(get_testdata_file("test-SR.dcm"), root / "studyA" / "report.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), root / "studyB" / "rtstruct.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), root / "MR_truncated.dcm")
    no_pixels = pydicom.dcmread(CT_SMALL)
    del no_pixels.PixelData
    save(no_pixels, root / "no_pixels.dcm")
    (root / "LICENSE").write_text("not DICOM\n")
    for path in root.rglob("*"):  # every DICOM file carries a patient name that must not leak
        if path.is_file() and path.name not in ("LICENSE",) and path != extra:
            try:
                ds = pydicom.dcmread(path)
            except Exception:
                continue
            ds.PatientName = SECRET_NAME
            ds.save_as(path)
    return {
        "studies": {study_a, study_b},
        "volumes": {("s1", 3), ("s2", 3), ("s3", 3), ("enhanced", 3), ("mixed", 2), ("mixed", 1)},
        "bad": {
            "copy_of_s1_slice2": "duplicate SOPInstanceUID",
            "report.dcm": "not an image object",
            "rtstruct.dcm": "not an image object",
            "MR_truncated.dcm": "truncated",
            "IM0004.dcm": "truncated",
            "no_pixels.dcm": "without pixel data",
            "LICENSE": "not a DICOM file",
        },
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("export")
    return root, build_tree(root)


def _folder(series_files: list[Path], root: Path) -> str:
    return series_files[0].relative_to(root).parts[1]


def test_every_image_volume_is_found_and_every_bad_file_has_its_reason(tree) -> None:
    root, expected = tree
    scan = scan_dicom(root, strict=False)
    found = {(_folder(s.files, root), len(s.files) if not s.multiframe else 3) for s in scan.series}
    assert found == expected["volumes"]
    assert len({s.key for s in scan.series}) == len(scan.series)
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert set(reasons) == set(expected["bad"])
    for name, fragment in expected["bad"].items():
        assert fragment in reasons[name], (name, reasons[name])
        assert SECRET_NAME not in reasons[name]
    s3 = next(s for s in scan.series if _folder(s.files, root) == "s3")
    assert [e.path.name for e in s3.excluded] == ["IM0004.dcm"]
    s1 = next(s for s in scan.series if _folder(s.files, root) == "s1")
    assert [e.path.name for e in s1.excluded] == ["copy_of_s1_slice2"]
    mixed = [s for s in scan.series if _folder(s.files, root) == "mixed"]
    assert mixed[0].series_uid == mixed[1].series_uid and mixed[0].key != mixed[1].key

    studies = set()
    for series in scan.series:
        volume = load_series(series.files)
        assert volume.shape[1:] == (series.rows, series.columns)
        studies.add(volume.metadata["StudyInstanceUID"])
    assert studies == expected["studies"]

    with pytest.raises(InputError, match="truncated") as err:  # strict (the default): never a silent gap
        scan_dicom(root)
    assert SECRET_NAME not in str(err.value)


def test_enhanced_multiframe_ct_reads_per_frame_and_writes_classic_slices(tmp_path: Path) -> None:
    hu = enhanced_ct(tmp_path / "in" / "enhanced.dcm", depth=4, size=32)
    volume = read_volume(tmp_path / "in")
    np.testing.assert_allclose(volume.array, hu, atol=0.5)  # HU through the per-frame rescale, sorted by z
    assert volume.origin == (-10.0, -10.0, 0.0) and volume.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert volume.metadata["SourceFrameNumbers"] == "4 3 2 1"

    files = write_series(volume.with_array(volume.array - 3), tmp_path / "out", series_description="mf derived",
                         derivation_description="test: minus 3 HU")
    back = read_volume(tmp_path / "out")
    np.testing.assert_allclose(back.array, volume.array - 3, atol=0.5 + 1e-3)
    source = pydicom.dcmread(tmp_path / "in" / "enhanced.dcm")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert validate_derived(ds) == []
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and "PerFrameFunctionalGroupsSequence" not in ds
        assert [float(v) for v in ds.ImagePositionPatient] == [-10.0, -10.0, 2.5 * k]
        reference = ds.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == EnhancedCTImageStorage
        assert reference.ReferencedFrameNumber == 4 - k
        assert ds.StudyInstanceUID == source.StudyInstanceUID


#: What a derived object may change or add against its source (new UIDs, dates, pixels, rescale, provenance);
#: every other attribute of the source is kept with its value and VR. InstanceCreatorUID is dropped, and so are the
#: acquisition attributes dciodvfy refuses in a DERIVED enhanced object (ORIGINAL_ONLY_KEYWORDS).
_DERIVED_CHANGES = {
    "SOPInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
    "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime", "ImageType", "PixelData",
    "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "DerivationDescription", "DerivationCodeSequence", "SourceImageSequence", "ContributingEquipmentSequence",
}


def _assert_derived_from(ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """``ds`` keeps every attribute of ``source`` but those a derived object changes (no error beyond the source's:
    the structure is the source's), and passes :func:`validate_derived` against it."""
    kept = {e.keyword for e in source if e.keyword and e.keyword not in _DERIVED_CHANGES}
    assert kept - {e.keyword for e in ds} <= {"InstanceCreatorUID", *ORIGINAL_ONLY_KEYWORDS}
    changed = [k for k in kept if k in ds and (ds[k].value != source[k].value or ds[k].VR != source[k].VR)]
    assert changed == []
    assert validate_derived(ds, source) == []


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", pytest.param(
    "emri_small_jpeg_2k_lossless.dcm", marks=pytest.mark.skipif(PYDICOM_MAJOR < 3, reason="pydicom 2: no encoder"))])
def test_legacy_multiframe_is_read_per_frame_and_written_with_the_same_frames(tmp_path: Path, name: str) -> None:
    """Issue 31: NumberOfFrames 10 and no functional groups was refused ("without per-frame functional groups");
    now every frame is a slice, in frame order, and the derived object is one multi-frame object like its source
    (same SOP class, frames, attributes and compression; new UIDs; DERIVED; provenance)."""
    path = Path(get_testdata_file(name))
    source = pydicom.dcmread(path)
    volume = read_volume(path)
    assert volume.shape == (10, 64, 64) and volume.modality == "MR"
    np.testing.assert_array_equal(volume.array, source.pixel_array)  # frame k is slice k; MR: stored values
    assert volume.metadata["SourceFrameNumbers"] == " ".join(str(k) for k in range(1, 11))
    assert volume.spacing[2] == pytest.approx(1.2)  # SpacingBetweenSlices

    denoised = volume.array * 0.5 + 3
    files = write_series(volume.with_array(denoised), tmp_path / "out", series_description="mf derived",
                         derivation_description="test: halved")
    assert [f.name for f in files] == ["IM0001.dcm"]
    ds = pydicom.dcmread(files[0])
    assert ds.NumberOfFrames == 10 and ds.SOPClassUID == source.SOPClassUID
    assert ds.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID  # lossless: kept
    assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "T1", "NONE"]  # enhanced class: value 2 is PRIMARY only
    assert ds.DerivationDescription == "test: halved" and ds.DerivationCodeSequence[0].CodeValue == "113087"
    reference = ds.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID and "ReferencedFrameNumber" not in reference
    _assert_derived_from(ds, source)

    back = read_volume(tmp_path / "out")  # the round trip: the reader reads the derived object back
    assert back.shape == volume.shape and back.metadata["SourceFrameNumbers"] == volume.metadata["SourceFrameNumbers"]
    np.testing.assert_allclose(back.array, denoised, atol=float(ds.RescaleSlope) / 2 + 1e-4)


def test_classic_legacy_multiframe_with_a_position_keeps_its_frame_structure(tmp_path: Path) -> None:
    """A classic MR Image object with 10 frames, one position and a frame increment pointer: the frames are stacked
    along the slice normal from that position at SpacingBetweenSlices; the derived object keeps the position, the
    pointer and the frame order, as a classic DERIVED\\SECONDARY image."""
    source = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    source.SOPClassUID = source.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    source.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    source.ImagePositionPatient, source.ImageOrientationPatient = [-20.0, -30.0, 5.0], [0, 1, 0, 0, 0, -1]
    source.PixelSpacing, source.SliceThickness = [0.9, 0.8], 1.2
    source.FrameIncrementPointer = pydicom.tag.Tag("SliceLocationVector")
    source.SliceLocationVector = [5.0 + 1.2 * k for k in range(10)]
    (tmp_path / "in").mkdir()
    save(source, tmp_path / "in" / "legacy.dcm")
    volume = read_volume(tmp_path / "in")
    np.testing.assert_array_equal(volume.array, source.pixel_array)
    assert volume.origin == (-20.0, -30.0, 5.0) and volume.spacing == pytest.approx((0.8, 0.9, 1.2))
    np.testing.assert_allclose(np.asarray(volume.direction).reshape(3, 3)[:, 2], [-1, 0, 0])  # row x column

    files = write_series(volume.with_array(volume.array + 1), tmp_path / "out", series_description="classic mf",
                         derivation_description="test: plus one")
    ds = pydicom.dcmread(files[0])
    assert len(files) == 1 and ds.NumberOfFrames == 10 and ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert ds.FrameIncrementPointer == source.FrameIncrementPointer
    _assert_derived_from(ds, source)
    assert validate_derived(ds) == []  # it has a geometry: valid on its own
    back = read_volume(files[0])
    np.testing.assert_allclose(back.array, volume.array + 1, atol=0.5 + 1e-3)
    assert back.origin == volume.origin and back.spacing == pytest.approx(volume.spacing)


def test_a_legacy_multiframe_object_is_written_only_with_each_of_its_frames(tmp_path: Path) -> None:
    volume = read_volume(get_testdata_file("emri_small.dcm"))
    part = Volume(volume.array[:5], spacing=volume.spacing, modality="MR", source_files=volume.source_files[:5],
                  metadata={**volume.metadata, "SourceFrameNumbers": "1 2 3 4 5"})
    with pytest.raises(InputError, match="5 slices of this 10-frame object"):
        write_series(part, tmp_path / "out", series_description="part")
    assert not (tmp_path / "out").exists()


def test_series_split_by_echo_and_repeated_acquisitions_but_not_by_rotation_numbers(tmp_path: Path) -> None:
    files = write_series(phantom_volume(2, 32, seed=6), tmp_path / "src", series_description="src")
    uid = generate_uid()
    for echo in (1, 2):  # multi-echo: same positions, two echoes
        for k, f in enumerate(files):
            _resave(f, tmp_path / "echo" / f"e{echo}_{k}", SeriesInstanceUID=uid, SOPInstanceUID=generate_uid(),
                    EchoNumbers=echo)
    uid = generate_uid()
    for acquisition in (1, 2):  # a repeated scan: same positions, two acquisitions
        for k, f in enumerate(files):
            _resave(f, tmp_path / "dyn" / f"a{acquisition}_{k}", SeriesInstanceUID=uid,
                    SOPInstanceUID=generate_uid(), AcquisitionNumber=acquisition)
    uid = generate_uid()
    for k, f in enumerate(files):  # step-and-shoot CT: one acquisition number per rotation, distinct positions
        _resave(f, tmp_path / "step" / f"r{k}", SeriesInstanceUID=uid, SOPInstanceUID=generate_uid(),
                AcquisitionNumber=k + 1)
    shutil.rmtree(tmp_path / "src")

    scan = scan_dicom(tmp_path)
    by_folder: dict[str, list] = {}
    for s in scan.series:
        by_folder.setdefault(s.files[0].parent.name, []).append(s)
    assert sorted(s.echo_number for s in by_folder["echo"]) == ["1", "2"]
    assert sorted(s.acquisition_number for s in by_folder["dyn"]) == ["1", "2"]
    assert [len(s.files) for s in by_folder["step"]] == [2]
    for series in scan.series:
        assert load_series(series.files).shape == (2, 32, 32)


def test_pydicom_compressed_files_decode_like_the_uncompressed_one() -> None:
    reference = read_volume(get_testdata_file("MR_small.dcm"))
    assert reference.modality == "MR"
    stored = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(reference.array[0], stored)  # MR: stored values, no rescale
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        volume = read_volume(get_testdata_file(name))
        np.testing.assert_array_equal(volume.array, reference.array, err_msg=name)


def test_pydicom_files_in_one_folder(tmp_path: Path) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "test-SR.dcm", "rtplan.dcm", "rtdose.dcm",
             "MR_truncated.dcm", "waveform_ecg.dcm"]
    for name in names:
        shutil.copy(get_testdata_file(name), tmp_path / name)
    scan = scan_dicom(tmp_path, strict=False)
    # MR_small_RLE is the same SOP instance as MR_small (same UID, same position): a duplicate, not a 2nd slice
    assert sorted(s.modality for s in scan.series) == ["CT", "MR"]
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert set(reasons) == {"MR_small_RLE.dcm", "test-SR.dcm", "rtplan.dcm", "rtdose.dcm", "MR_truncated.dcm",
                            "waveform_ecg.dcm"}
    assert "duplicate SOPInstanceUID" in reasons["MR_small_RLE.dcm"]
    assert "truncated" in reasons["MR_truncated.dcm"]
    for series in scan.series:
        assert load_series(series.files).shape[0] == 1


@pytest.mark.parametrize("name", ["emri_small.dcm", "CT_small.dcm"])
def test_dciodvfy_finds_no_error_in_a_derived_object_beyond_its_source(tmp_path, name):
    import subprocess

    from click.testing import CliRunner
    from pydicom.data import get_testdata_file

    from dd_medical.cli import cli

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(get_testdata_file(name), source / name)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["denoise", str(source), str(out), "--preset", "fast", "--iterations", "2",
                                      "--device", "cpu"])
    assert result.exit_code in (0, 3), result.output  # 3: the 2-step fit fails the fidelity check, by design

    def errors(path):
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        return {line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}

    derived = sorted(out.iterdir())
    assert len(derived) == 1
    assert errors(derived[0]) <= errors(source / name)


@pytest.mark.parametrize("name", ["emri_small.dcm", "CT_small.dcm"])
def test_dciodvfy_finds_no_error_in_an_uncertainty_series_beyond_its_source(tmp_path, name):
    """Issue 29: ``denoise --uncertainty SD_OUT`` writes the map as a second derived series (unsigned pixels, a
    rescale below 1, references to the denoised series): no dciodvfy error its source does not have, and one map
    object per denoised object (a legacy multi-frame source: one multi-frame map)."""
    import subprocess

    from click.testing import CliRunner

    from dd_medical.cli import cli

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(get_testdata_file(name), source / name)
    out, sd = tmp_path / "out", tmp_path / "sd"
    result = CliRunner().invoke(cli, ["denoise", str(source), str(out), "--uncertainty", str(sd), "--preset", "fast",
                                      "--iterations", "2", "--channels", "8", "--ensemble", "2", "--device", "cpu"])
    assert result.exit_code in (0, 3), result.output  # 3: the 2-step fit fails the fidelity check, by design

    def errors(path):
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        return {line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}

    (denoised,), (written,) = sorted(out.iterdir()), sorted(sd.iterdir())
    assert errors(written) <= errors(source / name)
    ds, den = pydicom.dcmread(written), pydicom.dcmread(denoised)
    assert ds.SeriesDescription.endswith(" uncertainty (SD, HU)" if name == "CT_small.dcm" else
                                         " uncertainty (SD, stored values)")
    assert ds.get("NumberOfFrames", 1) == den.get("NumberOfFrames", 1) and ds.SOPClassUID == den.SOPClassUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == den.SeriesInstanceUID
    assert ds.PixelRepresentation == 0 and float(ds.RescaleSlope) < 1 and float(ds.RescaleIntercept) == 0
