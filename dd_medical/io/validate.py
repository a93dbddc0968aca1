"""Checks of a derived image written by :func:`dd_medical.io.write_series`: the attributes PACS and viewers need.

:func:`validate_derived` lists what is missing or wrong (an empty list: valid) for the modules a derived
CT/MR/SC image (single-frame, or multi-frame with the frames of a legacy multi-frame source) must carry: SOP Common
(with consistent file meta information), Patient, General Study, General Series, Frame of Reference, General Image
with the derivation attributes, Image Plane, Image Pixel (and Multi-frame) and Modality LUT (rescale). Messages
name attributes and UIDs only, never their patient-related values.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from .dicom import one_line
from .dicom_write import ENHANCED_SOP_CLASSES
from .transfer_syntax import TRANSFER_SYNTAXES

_SMOOTHING = (codes.DCM.Smoothing.value, codes.DCM.Smoothing.scheme_designator)
_SOURCE_PURPOSE = (codes.DCM.SourceImageForImageProcessingOperation.value,
                   codes.DCM.SourceImageForImageProcessingOperation.scheme_designator)
_COMPRESSED = {uid for uid in TRANSFER_SYNTAXES.values() if uid.is_compressed}  # encapsulated pixel data
_TYPE2 = {  # present (may be empty)
    "Patient": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "General Study": ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"),
    "General Series": ("SeriesNumber",),
    "General Image": ("InstanceNumber",),
    "Image Plane": ("SliceThickness",),
}


def _uid_problem(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if not value:
        return f"{keyword} is missing or empty"
    if not UID(str(value)).is_valid:
        return f"{keyword} {value} is not a valid UID"
    return ""


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def _has_code(sequence: object, code: tuple[str, str]) -> bool:
    return any((item.get("CodeValue"), item.get("CodingSchemeDesignator")) == code for item in sequence or [])  # type: ignore[attr-defined]


def validate_derived(ds: Dataset, source: Dataset | None = None) -> list[str]:
    """Problems of one derived image dataset (read with :func:`pydicom.dcmread`); ``[]`` when valid.

    Checks: file meta (SOP class/instance equal to the data set's, a lossless transfer syntax that
    :func:`~dd_medical.io.write_series` writes, implementation UID); valid UIDs (SOP class/instance, study, series,
    frame of reference, referenced sources); Type 1 and Type 2 attributes of the modules listed in the module
    docstring; ImageType ``DERIVED\\SECONDARY`` (``DERIVED\\PRIMARY`` for an enhanced SOP class, whose second
    value can only be PRIMARY); a DerivationDescription, DerivationCodeSequence (113087, DCM), SourceImageSequence
    with purpose (121322, DCM); BurnedInAnnotation ``NO``; ContentDate/Time; a SeriesDescription of at most 64
    characters; orthonormal ImageOrientationPatient, positive PixelSpacing; 16-bit grey pixels that decode to
    NumberOfFrames (default 1) x Rows x Columns; a rescale, and no stale Smallest/LargestImagePixelValue.

    ``source``: the dataset the image was derived from. A derived image keeps its source's geometry, so the Image
    Plane problems the source has too (a legacy multi-frame object that records no position) are not counted:
    no problem beyond the source's.
    """
    problems: list[str] = []
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        problems.append("no file meta information")
    else:
        if meta.get("MediaStorageSOPClassUID") != ds.get("SOPClassUID"):
            problems.append("file meta MediaStorageSOPClassUID differs from SOPClassUID")
        if meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID"):
            problems.append("file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID")
        if meta.get("TransferSyntaxUID") not in TRANSFER_SYNTAXES.values():
            problems.append(f"transfer syntax {meta.get('TransferSyntaxUID')} is not one write_series writes")
        if not UID(str(meta.get("ImplementationClassUID", ""))).is_valid:
            problems.append("file meta ImplementationClassUID is missing or invalid")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        problem = _uid_problem(ds, keyword)
        if problem:
            problems.append(problem)
    for module, keywords in _TYPE2.items():
        problems += [f"{module}: {k} is missing" for k in keywords if k not in ds]
    if not ds.get("Modality"):
        problems.append("General Series: Modality is missing or empty")
    if len(str(ds.get("SeriesDescription", ""))) > 64 or not ds.get("SeriesDescription"):
        problems.append("General Series: SeriesDescription is missing or longer than 64 characters")
    if not ds.get("ContentDate") or not ds.get("ContentTime"):
        problems.append("General Image: ContentDate/ContentTime missing")

    image_type = [str(v) for v in ds.get("ImageType") or []]
    expected = ["DERIVED", "PRIMARY" if ds.get("SOPClassUID") in ENHANCED_SOP_CLASSES else "SECONDARY"]
    if image_type[:2] != expected:
        problems.append(f"ImageType {'/'.join(image_type)} does not start with {'/'.join(expected)}")
    if not ds.get("DerivationDescription"):
        problems.append("DerivationDescription is missing")
    if not _has_code(ds.get("DerivationCodeSequence"), _SMOOTHING):
        problems.append("DerivationCodeSequence lacks (113087, DCM, Smoothing)")
    sources = ds.get("SourceImageSequence") or []
    if not sources:
        problems.append("SourceImageSequence is missing or empty")
    for item in sources:
        for keyword in ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID"):
            problem = _uid_problem(item, keyword)
            if problem:
                problems.append(f"SourceImageSequence: {problem}")
        if not _has_code(item.get("PurposeOfReferenceCodeSequence"), _SOURCE_PURPOSE):
            problems.append("SourceImageSequence item lacks purpose (121322, DCM)")
    if ds.get("BurnedInAnnotation") != "NO":
        problems.append("BurnedInAnnotation is not NO")

    plane = [p for p in problems if p.startswith("Image Plane:")] + _image_plane_problems(ds)
    if source is not None:
        kept = set(_image_plane_problems(source)) | {f"Image Plane: {k} is missing" for k in _TYPE2["Image Plane"]
                                                     if k not in source}
        plane = [p for p in plane if p not in kept]
    problems = [p for p in problems if not p.startswith("Image Plane:")] + plane
    problems += _image_pixel_problems(ds)
    return problems


def _image_plane_problems(ds: Dataset) -> list[str]:
    problems: list[str] = []
    spacing = ds.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
        problems.append("Image Plane: PixelSpacing missing or not two positive values")
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        problems.append("Image Plane: ImagePositionPatient missing or not three values")
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        problems.append("Image Plane: ImageOrientationPatient missing or not six values")
    else:
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        if abs(np.linalg.norm(row) - 1) > 1e-4 or abs(np.linalg.norm(col) - 1) > 1e-4 or abs(row @ col) > 1e-4:
            problems.append("Image Plane: ImageOrientationPatient is not two orthonormal vectors")
    return problems


def _image_pixel_problems(ds: Dataset) -> list[str]:
    problems: list[str] = []
    if ds.get("SamplesPerPixel") != 1:
        problems.append("Image Pixel: SamplesPerPixel is not 1")
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        problems.append("Image Pixel: PhotometricInterpretation is not MONOCHROME1/2")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        problems.append("Image Pixel: Rows/Columns missing")
    bits_allocated, bits_stored = ds.get("BitsAllocated"), ds.get("BitsStored")
    if bits_allocated != 16 or bits_stored is None or not 1 <= bits_stored <= 16:
        problems.append("Image Pixel: BitsAllocated is not 16 or BitsStored is out of range")
    elif ds.get("HighBit") != bits_stored - 1:
        problems.append("Image Pixel: HighBit is not BitsStored - 1")
    if ds.get("PixelRepresentation") not in (0, 1):
        problems.append("Image Pixel: PixelRepresentation is not 0 or 1")
    frames = ds.get("NumberOfFrames", 1)
    if frames in (None, "") or int(frames) < 1:
        problems.append("Multi-frame: NumberOfFrames is empty or not positive")
        frames = 1
    frames = int(frames)
    pixel_data = ds.get("PixelData")
    if pixel_data is None:
        problems.append("Image Pixel: PixelData missing")
    elif _syntax(ds) not in _COMPRESSED:
        if len(pixel_data) != frames * rows * columns * 2:
            problems.append("Image Pixel: PixelData is not NumberOfFrames x Rows x Columns x 2 bytes")
    else:
        try:
            shape = ds.pixel_array.shape
        except Exception as err:  # decoders raise many types
            problems.append(f"Image Pixel: PixelData does not decode ({one_line(err)})")
        else:
            if shape != ((frames,) if frames > 1 else ()) + (rows, columns):
                problems.append(f"Image Pixel: PixelData decodes to {shape}, not NumberOfFrames x Rows x Columns")
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        problems.append("Modality LUT: RescaleSlope/RescaleIntercept missing")
    stale = [k for k in ("SmallestImagePixelValue", "LargestImagePixelValue") if k in ds]
    if stale:
        problems.append(f"stale {', '.join(stale)} kept from the source")
    return problems
