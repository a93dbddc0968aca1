"""Derived DICOM series out: new Series/SOP UIDs, same patient, study and slice geometry as the sources.

With source slices every output slice is derived from its own source (highdicom-style: each required attribute
set explicitly, provenance in DerivationCodeSequence / SourceImageSequence / ContributingEquipmentSequence).
Without sources a new anonymous study is built from the volume's geometry. A legacy multi-frame source (frames
without functional groups) gives one derived multi-frame object with the same frames. Pixels are int16 with a
rescale that fits the values, encoded losslessly (:mod:`dd_medical.io.transfer_syntax`: by default the source's
lossless compression where it can be kept, else Explicit VR Little Endian). The folder appears only once every file
is written.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from dd_medical.errors import InputError
from dd_medical.io._compat import compress, save, set_pixel_data
from dd_medical.io.atomic import atomic_output_dir
from dd_medical.io.dicom import looks_like_dicom, one_line, sop_class_of
from dd_medical.io.transfer_syntax import derived_transfer_syntax, resolve_transfer_syntax
from dd_medical.volume import Volume

# Derivation codes (DICOM part 16, CID 7203 and CID 7202 / DCM), from pydicom's code dictionary.
_SMOOTHING_CODE = codes.DCM.Smoothing
_SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
_MODIFYING_EQUIPMENT = codes.DCM.ModifyingEquipment

# Attributes of a source slice that describe its old pixel data or signatures and are stale once it is replaced.
_STALE_KEYWORDS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "ModalityLUTSequence",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
    "PixelDataProviderURL",
    "IconImageSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "EncryptedAttributesSequence",
    "InstanceCreatorUID",
    "SourceImageSequence",
    "DerivationCodeSequence",
    "DerivationDescription",
)

# Transfer syntaxes that are always lossy (JPEG 2000 and HTJ2K may be either; their encoders must say so).
_LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}
_MAX_SERIES_NUMBER = 2**31 - 1  # largest IS value
_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
_CLASSIC_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
#: ``encode(values, modality) -> (stored pixels, RescaleSlope, RescaleIntercept)`` (DICOM DS strings).
Encoder = Callable[[np.ndarray, str], tuple[np.ndarray, str, str]]
#: ``amend(ds, slices)``: last changes to a derived dataset holding the volume slices ``slices``, before saving.
Amend = Callable[[Dataset, list[int]], None]
#: SOP classes whose ImageType has four values and a second value that can only be PRIMARY (PS3.3 C.8.16.1).
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
}


def write_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    series_description: str,
    derivation_description: str = "",
    org_root: str | None = None,
    series_number: int | None = None,
    overwrite: bool = False,
    transfer_syntax: str | None = None,
    encode: Encoder | None = None,
    amend: Amend | None = None,
) -> list[Path]:
    """Write ``volume`` as a new DICOM series (one file per slice, ``IM0001.dcm`` ... in slice order).

    With ``volume.source_files`` (one per slice) every slice is derived from its source: same patient, study,
    frame of reference and slice geometry; new Series/SOP Instance UIDs; ImageType ``DERIVED\\SECONDARY``;
    DerivationCodeSequence "Smoothing" and SourceImageSequence pointing at the source slice. Without sources a new
    anonymous study is built from the volume's geometry (CT Image, MR Image or Secondary Capture storage).
    Pixels are int16, with RescaleSlope/Intercept chosen so the values fit (slope 1 for HU whenever possible).
    UIDs use ``org_root`` as prefix, or pydicom's ``2.25.`` UUID form when ``None``.
    Slices from an enhanced multi-frame source (``volume.metadata["SourceFrameNumbers"]``, set by the reader) are
    written as classic single-frame CT/MR images with that frame's geometry, referencing the source frame. The
    frames of a legacy multi-frame source (NumberOfFrames > 1 without functional groups) stay one object: a derived
    multi-frame object of the source's SOP class, its frames in the source's frame order, the source's shared
    attributes (geometry included), one file; the volume must hold each of its frames once.
    ``transfer_syntax``: ``"auto"`` (or ``None``, the default: the sources' syntax when it is lossless and its
    encoder is installed, else Explicit VR Little Endian), ``"explicit"``, ``"rle"``, ``"jpeg2000-lossless"``,
    ``"jpegls-lossless"`` or one of their UIDs (:mod:`dd_medical.io.transfer_syntax`); always lossless.
    ``out_dir`` must not exist or be empty (``overwrite=True``: a complete old folder is replaced as a whole);
    files appear only once all are written. Returns the files written.
    ``encode(values, modality) -> (stored, slope, intercept)`` turns the values into stored pixels (default
    :func:`encode_int16`; an uncertainty map: :func:`dd_medical.io.dicom_uncertainty.encode_sd`, unsigned);
    ``amend(ds, slices)`` is called on every dataset (holding volume slices ``slices``) just before it is saved, for
    what a special derived series says about itself (:mod:`dd_medical.io.dicom_uncertainty`).
    """
    chosen = resolve_transfer_syntax(transfer_syntax)
    if not np.all(np.isfinite(volume.array)):
        raise InputError("volume holds NaN or infinite values; cannot write DICOM")
    prefix = _uid_prefix(org_root)
    sources = [Path(p) for p in volume.source_files]
    if sources and len(sources) != volume.shape[0]:
        raise InputError(f"volume has {volume.shape[0]} slices but {len(sources)} source files")
    stored, slope, intercept = (encode or encode_int16)(volume.array, volume.modality)
    headers: dict[Path, Dataset] = {}
    frames = _frame_numbers(volume)
    plan = _plan(sources, frames, headers)
    syntaxes = [_syntax_of(_read_source(source, headers)) for source in dict.fromkeys(sources)]
    now = dt.datetime.now()
    context = _WriteContext(
        series_uid=generate_uid(prefix=prefix),
        series_description=series_description[:64],
        derivation_description=derivation_description[:1024],
        series_number=series_number,
        date=now.strftime("%Y%m%d"),
        time=now.strftime("%H%M%S.%f"),
        prefix=prefix,
        slope=slope,
        intercept=intercept,
        transfer_syntax=derived_transfer_syntax(chosen, syntaxes),
    )
    width = max(4, len(str(len(plan))))
    names = [f"IM{n + 1:0{width}d}.dcm" for n in range(len(plan))]
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp_dir:
        for name, item in zip(names, plan, strict=True):
            k = item.slices[0]
            if item.multiframe:
                ds = _derived_multiframe(sources[k], stored[list(item.slices)], context, headers)
            elif sources:
                ds = _derived_slice(sources[k], stored[k], context, frame=frames[k], instance_number=k + 1,
                                    headers=headers)
            else:
                ds = _new_slice(volume, k, stored[k], context)
            if amend is not None:
                amend(ds, list(item.slices))
            save(ds, tmp_dir / name)
    return [Path(out_dir) / name for name in names]


@dataclass
class _WriteContext:
    """Values shared by all slices of one written series (filled in as the first slice is built)."""

    series_uid: str
    series_description: str
    derivation_description: str
    series_number: int | None
    date: str
    time: str
    prefix: str | None
    slope: str
    intercept: str
    transfer_syntax: UID = ExplicitVRLittleEndian
    study_uid: str = ""
    frame_of_reference_uid: str = ""


@dataclass
class _Output:
    """One file to write: the volume slices it holds (in its frame order) and whether it is a multi-frame object."""

    slices: list[int]
    multiframe: bool = False


def _is_legacy_multiframe(header: Dataset) -> bool:
    """Several frames and no per-frame functional groups: frames that share the object's attributes."""
    return int(header.get("NumberOfFrames", 1) or 1) > 1 and not header.get("PerFrameFunctionalGroupsSequence")


def _plan(sources: list[Path], frames: list[int], headers: dict[Path, Dataset]) -> list[_Output]:
    """The files of a derived series, in slice order: one per slice, except the frames of a legacy multi-frame
    source, which stay together in one object (at the place of its first slice) in the source's frame order."""
    plan: list[_Output] = []
    objects: dict[Path, _Output] = {}
    for k, frame in enumerate(frames):
        source = sources[k] if sources else None
        if source is None or not frame or not _is_legacy_multiframe(_read_source(source, headers)):
            plan.append(_Output([k]))
        elif source in objects:
            objects[source].slices.append(k)
        else:
            objects[source] = _Output([k], multiframe=True)
            plan.append(objects[source])
    for source, item in objects.items():
        item.slices.sort(key=lambda k: frames[k])
        count = int(headers[source].NumberOfFrames)
        if [frames[k] for k in item.slices] != list(range(1, count + 1)):
            raise InputError(f"the volume holds {len(item.slices)} slices of this {count}-frame object, not each "
                             "of its frames once; its derived multi-frame object needs every frame", source)
    return plan


def _syntax_of(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def _uid_prefix(org_root: str | None) -> str | None:
    if org_root is None:
        return None
    prefix = org_root if org_root.endswith(".") else org_root + "."
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", prefix) or len(prefix) > 40:
        raise InputError(f"org_root {org_root!r} is not a valid UID root (digits and dots, at most 40 characters)")
    return prefix


def encode_int16(values: np.ndarray, modality: str) -> tuple[np.ndarray, str, str]:
    """Stored int16 values and the RescaleSlope / RescaleIntercept (DICOM DS strings) that map them back.

    ``values`` (any shape, float) = ``stored * slope + intercept`` to within ``slope / 2``. CT: slope 1 and
    intercept -1024 (or 0) whenever the range fits, so HU stay integers as on the scanner. Other modalities:
    slope 1 when the range fits int16 and spans at least 1024, else a finer or coarser slope spreading the range
    over the int16 span.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    if modality == "CT" or hi - lo >= 1024:
        for intercept in (-1024.0, 0.0) if modality == "CT" else (0.0,):
            if lo - intercept >= -32768 and hi - intercept <= 32767:
                stored = np.clip(np.rint(values - intercept), -32768, 32767).astype(np.int16)
                return stored, "1", str(int(intercept))
    slope_ds = DSfloat((hi - lo) / 65000.0 or 1.0, auto_format=True)
    intercept_ds = DSfloat((lo + hi) / 2.0, auto_format=True)
    slope, intercept = float(slope_ds), float(intercept_ds)
    stored = np.clip(np.rint((values - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, str(slope_ds), str(intercept_ds)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return version("dd-medical")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _set_pixels(ds: Dataset, stored: np.ndarray, context: _WriteContext, photometric: str) -> None:
    """16-bit pixels ``stored`` (int16, or uint16 from an unsigned ``encode``; (H, W), or (frames, H, W) for a
    multi-frame object), encoded losslessly in the series' transfer syntax, and the rescale that maps them to the
    volume's values."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = np.ascontiguousarray(stored)
    set_pixel_data(ds, pixels, photometric, 16)
    if context.transfer_syntax != ExplicitVRLittleEndian:
        try:
            compress(ds, context.transfer_syntax, pixels)
        except Exception as err:  # encoders raise many types; one clear message naming the syntax
            raise InputError(f"cannot encode the derived pixels as {context.transfer_syntax.name}: "
                             f"{one_line(err)}") from err
    ds.RescaleSlope = context.slope
    ds.RescaleIntercept = context.intercept
    ds.RescaleType = "HU" if str(ds.get("Modality", "")) == "CT" else "US"


def _set_text_charset(ds: Dataset, *texts: str) -> None:
    if any(not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8; pydicom re-encodes every text value on writing


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    return meta


def _frame_numbers(volume: Volume) -> list[int]:
    """1-based source frame per slice (0: a single-frame source file), from the reader's metadata."""
    text = volume.metadata.get("SourceFrameNumbers", "")
    if not text:
        return [0] * volume.shape[0]
    numbers = [int(v) for v in text.split()]
    if len(numbers) != volume.shape[0]:
        raise InputError(f"volume has {volume.shape[0]} slices but {len(numbers)} source frame numbers")
    return numbers


def _read_source(source: Path, headers: dict[Path, Dataset]) -> Dataset:
    if source not in headers:
        try:
            headers[source] = pydicom.dcmread(source, stop_before_pixels=True, force=not looks_like_dicom(source)[1])
        except (OSError, InvalidDicomError, EOFError, ValueError) as err:
            raise InputError(f"cannot read source slice: {one_line(err)}", source) from err
    return headers[source]


_MULTIFRAME_KEYWORDS = (
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence",
    "DimensionOrganizationType",
    "ConcatenationUID",
    "ConcatenationFrameOffsetNumber",
    "InConcatenationNumber",
    "InConcatenationTotalNumber",
    "RepresentativeFrameNumber",
)


def _frame_as_slice(header: Dataset, frame: int, source: Path) -> Dataset:
    """Frame ``frame`` (1-based) of an enhanced multi-frame object as the header of a classic single-frame image:
    its functional groups' geometry and rescale become top-level attributes, the groups themselves are dropped."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or not 1 <= frame <= len(per_frame):
        raise InputError(f"source has no functional groups for frame {frame}", source)
    own = per_frame[frame - 1]
    shared = (header.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    ds = Dataset()
    ds.file_meta = getattr(header, "file_meta", FileMetaDataset())
    for element in header:
        if element.keyword not in _MULTIFRAME_KEYWORDS:
            ds.add(copy.deepcopy(element))
    for sequence, keywords in (
        ("PlanePositionSequence", ("ImagePositionPatient",)),
        ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
        ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")),
        ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth")),
    ):
        for groups in (own, shared):
            if groups.get(sequence):
                item = groups[sequence].value[0]
                for keyword in keywords:
                    if keyword in item:
                        setattr(ds, keyword, item[keyword].value)
                break
    modality = str(ds.get("Modality", "") or "")
    if modality == "CT":
        for keyword in ("KVP", "AcquisitionNumber"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    elif modality == "MR":
        defaults = {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "",
                    "RepetitionTime": "", "EchoTime": "", "EchoTrainLength": ""}
        for keyword, value in defaults.items():
            if keyword not in ds:
                setattr(ds, keyword, value)
    if "SliceThickness" not in ds:
        ds.SliceThickness = ""
    return ds


def _derived_slice(
    source: Path,
    stored: np.ndarray,
    context: _WriteContext,
    *,
    frame: int = 0,
    instance_number: int | None = None,
    headers: dict[Path, Dataset] | None = None,
) -> Dataset:
    """A single-frame image derived from ``source`` (or from frame ``frame``, 1-based, of an enhanced source)."""
    header = _read_source(source, {} if headers is None else headers)
    frames_in_source = int(header.get("NumberOfFrames", 1) or 1)
    if frame:
        ds = _frame_as_slice(header, frame, source)
    elif frames_in_source > 1:
        raise InputError(f"source is a {frames_in_source}-frame object but the volume names no source frame", source)
    else:
        ds = copy.deepcopy(header)
    _check_matrix(ds, stored.shape, source)
    sop_class = None
    if frame:  # one frame of an enhanced object: a classic single-frame image of the same modality
        sop_class = str(_CLASSIC_SOP_CLASSES.get(str(ds.get("Modality", "")), SecondaryCaptureImageStorage))
        ds.InstanceNumber = instance_number or frame
        if sop_class == SecondaryCaptureImageStorage and "ConversionType" not in ds:
            ds.ConversionType = "WSD"
    _derive(ds, context, sop_class=sop_class, frame=frame, instance_number=instance_number)
    _set_pixels(ds, stored, context, str(ds.get("PhotometricInterpretation") or "MONOCHROME2"))
    return ds


#: Attributes of the MR Pulse Sequence and Bulk Motion Synchronization modules that describe an acquisition and are
#: conditional on ImageType value 1 being ORIGINAL or MIXED (PS3.3 C.8.13.4, C.7.6.18.3): dciodvfy refuses them in a
#: DERIVED enhanced object, so they are left out of one.
ORIGINAL_ONLY_KEYWORDS = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultiPlanarExcitation", "PhaseContrast",
    "TimeOfFlightContrast", "SteadyStatePulseSequence", "EchoPlanarPulseSequence", "SaturationRecovery",
    "SpectrallySelectedSuppression", "OversamplingPhase", "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories", "BulkMotionCompensationTechnique",
)


def _derived_multiframe(source: Path, stored: np.ndarray, context: _WriteContext,
                        headers: dict[Path, Dataset]) -> Dataset:
    """A multi-frame object derived from the legacy multi-frame ``source``: ``stored`` (frames, H, W) in its frame
    order; the source's SOP class, shared attributes (geometry) and frame structure (FrameIncrementPointer and
    what it points at); a SourceImageSequence referencing the whole source object."""
    ds = copy.deepcopy(_read_source(source, headers))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.shape[0] != frames:
        raise InputError(f"source has {frames} frames but the volume gives {stored.shape[0]}", source)
    _check_matrix(ds, stored.shape[1:], source)
    increment = ds.get("FrameIncrementPointer")
    _derive(ds, context, sop_class=None, frame=0, instance_number=None)
    if ds.SOPClassUID in ENHANCED_SOP_CLASSES:
        for keyword in ORIGINAL_ONLY_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
    if increment is not None:
        ds.FrameIncrementPointer = increment
    _set_pixels(ds, stored, context, str(ds.get("PhotometricInterpretation") or "MONOCHROME2"))
    return ds


def _check_matrix(ds: Dataset, shape: tuple[int, ...], source: Path) -> None:
    if (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) != tuple(shape):
        raise InputError(
            f"source slice is {ds.get('Rows')}x{ds.get('Columns')} but the volume slice is "
            f"{shape[0]}x{shape[1]} (was the volume resampled?)",
            source,
        )


def _derived_image_type(source_image_type: list[str], sop_class: str, modality: object) -> list[str]:
    """``DERIVED\\SECONDARY`` and the source's third value; for an enhanced SOP class, whose second value can only
    be PRIMARY and which has four values, ``DERIVED\\PRIMARY`` and the source's third and fourth."""
    if sop_class in ENHANCED_SOP_CLASSES:
        rest = (source_image_type[2:4] + ["NONE", "NONE"])[:2]
        return ["DERIVED", "PRIMARY", *rest]
    third = source_image_type[2:3] or (["AXIAL"] if modality == "CT" else [])
    return ["DERIVED", "SECONDARY", *third]


def _derive(ds: Dataset, context: _WriteContext, *, sop_class: str | None, frame: int,
            instance_number: int | None) -> None:
    """Turn a copy of a source header into the header of a derived image: stale and private attributes removed,
    new SOP/series UIDs (``sop_class``: the source's when None), series attributes, ImageType, derivation and
    source references (frame ``frame`` when not 0), contributing equipment, Type 2 attributes."""
    source_class = sop_class_of(ds)
    source_instance = str(ds.get("SOPInstanceUID", "") or "")
    if not source_instance and getattr(ds, "file_meta", None) is not None:
        source_instance = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    source_series_number = ds.get("SeriesNumber")
    source_syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or "")) if hasattr(ds, "file_meta") else UID("")
    source_image_type = [str(v) for v in (ds.get("ImageType") or [])]

    ds.remove_private_tags()
    for tag in [t for t in ds.keys() if t.element == 0]:  # group lengths would be stale
        del ds[tag]
    for keyword in _STALE_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)

    sop_instance = generate_uid(prefix=context.prefix)
    sop_class = sop_class or source_class or str(
        CTImageStorage if ds.get("Modality") == "CT" else SecondaryCaptureImageStorage)
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.SeriesInstanceUID = context.series_uid
    # Anonymised sources sometimes carry empty Type 1 UIDs: give the derived series valid ones (one per call).
    if not ds.get("StudyInstanceUID"):
        context.study_uid = context.study_uid or generate_uid(prefix=context.prefix)
        ds.StudyInstanceUID = context.study_uid
    if not ds.get("FrameOfReferenceUID") and ("FrameOfReferenceUID" in ds or "ImagePositionPatient" in ds):
        context.frame_of_reference_uid = context.frame_of_reference_uid or generate_uid(prefix=context.prefix)
        ds.FrameOfReferenceUID = context.frame_of_reference_uid
    if context.series_number is None:
        base = int(source_series_number) if source_series_number not in (None, "") else 0
        context.series_number = min(base + 1000, _MAX_SERIES_NUMBER)
    ds.SeriesNumber = context.series_number
    ds.SeriesDescription = context.series_description
    ds.SeriesDate, ds.SeriesTime = context.date, context.time
    ds.ContentDate, ds.ContentTime = context.date, context.time
    ds.InstanceCreationDate, ds.InstanceCreationTime = context.date, context.time
    ds.ImageType = _derived_image_type(source_image_type, sop_class, ds.get("Modality"))
    if context.derivation_description:
        ds.DerivationDescription = context.derivation_description
    ds.DerivationCodeSequence = DicomSequence([_code_item(_SMOOTHING_CODE)])
    if source_class and source_instance:
        reference = Dataset()
        reference.ReferencedSOPClassUID = source_class
        reference.ReferencedSOPInstanceUID = source_instance
        if frame:
            reference.ReferencedFrameNumber = frame
        reference.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(_SOURCE_IMAGE_PURPOSE)])
        ds.SourceImageSequence = DicomSequence([reference])
    ds.BurnedInAnnotation = "NO"
    if source_syntax in _LOSSY_SYNTAXES and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"  # the values went through a lossy codec once; say so in the derived copy
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(_MODIFYING_EQUIPMENT)])
    equipment.Manufacturer = "dd-medical"
    equipment.SoftwareVersions = _software_version()
    equipment.ContributionDateTime = context.date + context.time
    equipment.ContributionDescription = "Deep Decoder denoising"
    ds.ContributingEquipmentSequence = DicomSequence([*(ds.get("ContributingEquipmentSequence") or []), equipment])
    for keyword in _TYPE2_KEYWORDS:  # required-but-may-be-empty attributes some sources lack
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "InstanceNumber" not in ds or ds.InstanceNumber in (None, ""):
        ds.InstanceNumber = instance_number or ""
    _set_text_charset(ds, context.series_description, context.derivation_description)


def _new_slice(volume: Volume, k: int, stored: np.ndarray, context: _WriteContext) -> Dataset:
    """A slice of a new series built only from the volume's geometry (no source DICOM)."""
    modality = volume.modality if volume.modality in ("CT", "MR") else "OT"
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(modality, SecondaryCaptureImageStorage)
    if not context.study_uid:
        context.study_uid = generate_uid(prefix=context.prefix)
        context.frame_of_reference_uid = generate_uid(prefix=context.prefix)
    sop_instance = generate_uid(prefix=context.prefix)
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    row, col, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    position = np.asarray(volume.origin, dtype=np.float64) + k * float(volume.spacing[2]) * slice_dir
    normal = np.cross(row, col)

    ds = Dataset()
    ds.file_meta = _file_meta(str(sop_class), sop_instance)
    # SOP common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = context.date, context.time
    # Patient (anonymous: these series carry no patient)
    ds.PatientName = ""
    ds.PatientID = "ANONYMOUS"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General study
    ds.StudyInstanceUID = context.study_uid
    ds.StudyDate, ds.StudyTime = context.date, context.time
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General series
    ds.Modality = modality
    ds.SeriesInstanceUID = context.series_uid
    ds.SeriesNumber = context.series_number if context.series_number is not None else 1
    ds.SeriesDescription = context.series_description
    ds.SeriesDate, ds.SeriesTime = context.date, context.time
    if modality in ("CT", "MR"):
        ds.PatientPosition = ""
    # Frame of reference
    ds.FrameOfReferenceUID = context.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General equipment
    ds.Manufacturer = "dd-medical"
    ds.SoftwareVersions = _software_version()
    # General image
    ds.InstanceNumber = k + 1
    ds.ContentDate, ds.ContentTime = context.date, context.time
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if modality == "CT" else ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    if context.derivation_description:
        ds.DerivationDescription = context.derivation_description
    # Image plane
    ds.PixelSpacing = [_ds(volume.spacing[1]), _ds(volume.spacing[0])]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceThickness = _ds(volume.spacing[2])
    ds.SliceLocation = _ds(float(position @ normal))
    # Modality specific
    if modality == "CT":
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    elif modality == "MR":
        ds.ScanningSequence = "RM"  # research mode: the acquisition is unknown
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.SpacingBetweenSlices = _ds(volume.spacing[2])
    else:
        ds.ConversionType = "WSD"
    _set_text_charset(ds, context.series_description, context.derivation_description)
    _set_pixels(ds, stored, context, "MONOCHROME2")
    return ds


def _ds(value: float) -> DSfloat:
    """A decimal string of at most 16 characters: 12 significant digits (sub-nanometre for millimetres) when it
    fits, else rounded to fit."""
    text = f"{float(value):.12g}"
    return DSfloat(text) if len(text) <= 16 else DSfloat(float(value), auto_format=True)


def write_lossy_series(volume: Volume, out_dir: str | Path, *, ratio: float, method: str, series_description: str,
                       derivation_description: str, overwrite: bool = False) -> list[Path]:
    """A new DICOM series (:func:`write_series`) marked lossy: LossyImageCompression ``01``,
    LossyImageCompressionRatio ``ratio`` and LossyImageCompressionMethod ``method``. Atomic."""
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        files = write_series(volume, tmp, series_description=series_description,
                             derivation_description=derivation_description, overwrite=True)
        for name in files:
            ds = pydicom.dcmread(tmp / Path(name).name)
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = [DSfloat(ratio, auto_format=True)]
            ds.LossyImageCompressionMethod = [method]
            save(ds, tmp / Path(name).name)
    return [out_dir / Path(name).name for name in files]
