"""DICOM series in: discovery in a folder tree and geometry-sorted volumes.

Every file in a folder tree is checked for DICOM content whatever its name; image objects are grouped into series
(SeriesInstanceUID, split by orientation, matrix size, echo number, repeated acquisitions and multi-frame object)
and each series' slices are sorted by their position along the slice normal, never by InstanceNumber. Multi-frame
objects give one slice per frame: enhanced (functional group) CT/MR objects with each frame's geometry, legacy ones
(frames sharing the object's attributes) in frame order. Inputs are opened read-only and never
written to. Messages name files and UIDs, never patient data. Writing derived series is
:mod:`dd_medical.io.dicom_write`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dd_medical.errors import InputError
from dd_medical.io._compat import apply_modality_lut, decoder_available, deferred_element, read_encoding
from dd_medical.volume import Volume

logger = logging.getLogger(__name__)

# SOP classes (or class prefixes) that never hold a slice to denoise: SR, KO, PR, RT objects other than RT Image,
# raw data / registration / segmentation, encapsulated documents, waveforms, the DICOMDIR.
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection (88.59)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, fiducials, segmentation
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT beams treatment record
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/STL
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)
_NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "SEG", "RAW", "DOC"}

_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}

_POSITION_TOLERANCE_MM = 1e-3  # slices closer than this along the normal are at the same position


# ----------------------------------------------------------------------------------------------------------------
# Discovery


@dataclass
class SkippedFile:
    """A file found while scanning that is not part of any image series, with the reason.

    ``series_uid`` is set when the file belongs to an image series but was left out of it (a truncated slice, a
    second copy of a slice with the same SOPInstanceUID); the series itself is still read from its other files.
    """

    path: Path
    reason: str
    series_uid: str = ""


@dataclass
class DicomSeries:
    """The files of one image volume: one SeriesInstanceUID, split by orientation, matrix size, echo number,
    acquisition number (where acquisitions repeat slice positions) and multi-frame object; not yet sorted.

    ``split_key`` tells the volumes of one series apart (stable between scans of the same files); ``key`` is
    ``"<SeriesInstanceUID>#<split_key>"``. ``excluded`` lists files of this series that were left out, with why.
    """

    series_uid: str
    modality: str
    rows: int
    columns: int
    files: list[Path] = field(default_factory=list)
    split_key: str = ""
    acquisition_number: str = ""
    echo_number: str = ""
    multiframe: bool = False
    excluded: list[SkippedFile] = field(default_factory=list)
    samples_per_pixel: int = 1  # 3 for colour (RGB/YBR) images, which are not grey-level volumes

    @property
    def key(self) -> str:
        """``"<SeriesInstanceUID>#<split_key>"``: unique per volume within a scan, UIDs and numbers only."""
        return f"{self.series_uid}#{self.split_key}" if self.split_key else self.series_uid

    def describe(self) -> str:
        """``"<uid> (<n> slices, <rows>x<columns>, <modality>)"`` for messages."""
        uid = self.series_uid or "<no SeriesInstanceUID>"
        what = "multi-frame object" if self.multiframe else f"{len(self.files)} slices"
        parts = [what, f"{self.rows}x{self.columns}", self.modality]
        if self.echo_number:
            parts.append(f"echo {self.echo_number}")
        if self.acquisition_number:
            parts.append(f"acquisition {self.acquisition_number}")
        return f"{uid} ({', '.join(parts)})"


@dataclass
class DicomScan:
    """What :func:`scan_dicom` found in a folder tree: image series, and the files it skipped (with reasons)."""

    root: Path
    series: list[DicomSeries]
    skipped: list[SkippedFile]


@dataclass
class _Found:
    """One image file seen by the scan, with what grouping needs."""

    path: Path
    header: Dataset
    group: tuple
    sop_instance: str
    acquisition: str
    position: float | None  # along the slice normal, millimetres (None without geometry)


def scan_dicom(folder: str | Path, *, strict: bool = True) -> DicomScan:
    """Find every DICOM image series under ``folder`` (recursively, any file name), reading headers only.

    Files are grouped by SeriesInstanceUID and split into separate volumes where orientation, Rows/Columns or
    EchoNumbers differ, where AcquisitionNumbers differ *and* the acquisitions repeat slice positions (dynamic or
    repeated scans; a step-and-shoot CT numbering each rotation stays one volume), and per multi-frame object.
    A second file with the same SOPInstanceUID at the same position (a copy of a slice) is left out and listed.

    Non-DICOM files and non-image DICOM objects (SR, KO, PR, RT, RAW, ...) are skipped and listed in
    :attr:`DicomScan.skipped` with a reason. A corrupt or truncated DICOM file (unparseable header, image without
    pixel data, pixel data shorter than declared) raises :class:`InputError` naming it when ``strict`` (a series
    silently missing a slice would be worse); with ``strict=False`` it is listed in ``skipped`` instead, and in
    the ``excluded`` list of its series when its header names one, so batch runs go on and report it.
    """
    root = _existing_path(folder)
    if not root.is_dir():
        raise InputError("is not a folder", root)
    found: list[_Found] = []
    skipped: list[SkippedFile] = []
    for path in _walk_files(root):
        try:
            header = _read_header(path)
        except InputError as err:
            if strict:
                raise
            skipped.append(SkippedFile(path, err.problem))
            continue
        if header is None:
            skipped.append(SkippedFile(path, "not a DICOM file"))
            continue
        try:
            reason = _non_image_reason(header, path)
            if not reason:
                _check_pixel_length(header, path)
        except InputError as err:
            if strict:
                raise
            skipped.append(SkippedFile(path, err.problem, str(header.get("SeriesInstanceUID", "") or "")))
            continue
        if reason:
            skipped.append(SkippedFile(path, reason))
            continue
        found.append(_found(path, header, root))
    series = _group(found, skipped)
    for item in skipped:
        logger.info("skipped %s: %s", item.path, item.reason)
    return DicomScan(root=root, series=series, skipped=skipped)


def _found(path: Path, header: Dataset, root: Path) -> _Found:
    series_uid = str(header.get("SeriesInstanceUID", "") or "")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    sop_instance = str(header.get("SOPInstanceUID", "") or "")
    iop = _orientation(header)
    iop_key = tuple(round(float(v), 4) + 0.0 for v in iop) if iop is not None else None
    echo = _number(header.get("EchoNumbers"))
    acquisition = _number(header.get("AcquisitionNumber"))
    multiframe_key = _short_hash(sop_instance or str(path.relative_to(root))) if frames > 1 else ""
    folder_key = "" if series_uid else _short_hash(str(path.parent.relative_to(root)))
    group = (series_uid, folder_key, iop_key, int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0),
             echo, multiframe_key)
    position = None
    ipp = header.get("ImagePositionPatient")
    if iop is not None and ipp is not None and len(ipp) == 3 and frames == 1:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        position = float(np.asarray([float(v) for v in ipp]) @ normal)
    return _Found(path, header, group, sop_instance, acquisition, position)


def _orientation(header: Dataset) -> list[float] | None:
    """ImageOrientationPatient of a single-frame image, or the shared/first-frame one of an enhanced object."""
    iop = header.get("ImageOrientationPatient")
    if iop is None:
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            items = header.get(groups)
            if items and "PlaneOrientationSequence" in items[0]:
                iop = items[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
                break
    if iop is None or len(iop) != 6:
        return None
    return [float(v) for v in iop]


def _number(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "/".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _group(found: list[_Found], skipped: list[SkippedFile]) -> list[DicomSeries]:
    groups: dict[tuple, list[_Found]] = {}
    for item in found:
        groups.setdefault(item.group, []).append(item)
    series: list[DicomSeries] = []
    for group, items in groups.items():
        excluded: list[SkippedFile] = []
        kept: list[_Found] = []
        seen: dict[str, _Found] = {}
        # Of two copies of a slice keep the one beside most of its series (the stray copy is the one left out).
        per_folder: dict[Path, int] = {}
        for item in items:
            per_folder[item.path.parent] = per_folder.get(item.path.parent, 0) + 1
        for item in sorted(items, key=lambda i: (-per_folder[i.path.parent], str(i.path))):
            first = seen.get(item.sop_instance) if item.sop_instance else None
            if first is not None and _same_slot(first, item):
                excluded.append(SkippedFile(
                    item.path, f"duplicate SOPInstanceUID {item.sop_instance} (same slice as {first.path.name})",
                    group[0],
                ))
                continue
            if first is not None:
                logger.warning("%s reuses SOPInstanceUID %s of %s at another position; both kept",
                               item.path, item.sop_instance, first.path)
            seen.setdefault(item.sop_instance, item)
            kept.append(item)
        skipped.extend(excluded)
        kept.sort(key=lambda i: str(i.path))
        for acquisition, members in _split_acquisitions(kept).items():
            series.append(_make_series(group, members, acquisition))
        if series and excluded:
            series[-1].excluded.extend(excluded)
    # Truncated slices of a series found in the scan: report them with that series too.
    by_uid: dict[str, list[DicomSeries]] = {}
    for s in series:
        by_uid.setdefault(s.series_uid, []).append(s)
    for item in skipped:
        if item.series_uid and item.series_uid in by_uid and not item.reason.startswith("duplicate"):
            by_uid[item.series_uid][0].excluded.append(item)
    return sorted(series, key=lambda s: (s.series_uid, s.split_key, str(s.files[0])))


def _same_slot(a: _Found, b: _Found) -> bool:
    """Two files with one SOPInstanceUID are copies of one slice when they sit at the same position."""
    if a.position is None or b.position is None:
        return a.position is None and b.position is None
    return abs(a.position - b.position) < _POSITION_TOLERANCE_MM


def _split_acquisitions(items: list[_Found]) -> dict[str, list[_Found]]:
    acquisitions = {item.acquisition for item in items}
    positions = [round(item.position / _POSITION_TOLERANCE_MM) for item in items if item.position is not None]
    if len(acquisitions) > 1 and len(set(positions)) < len(positions):
        split: dict[str, list[_Found]] = {}
        for item in items:
            split.setdefault(item.acquisition, []).append(item)
        return dict(sorted(split.items()))
    return {"": items}


def _make_series(group: tuple, members: list[_Found], acquisition: str) -> DicomSeries:
    series_uid, folder_key, iop_key, rows, columns, echo, multiframe_key = group
    parts = [f"{rows}x{columns}", "o" + (_short_hash(repr(iop_key)) if iop_key else "-")]
    if echo:
        parts.append(f"e{echo}")
    if acquisition:
        parts.append(f"a{acquisition}")
    if multiframe_key:
        parts.append(f"mf{multiframe_key}")
    if folder_key:
        parts.append(f"d{folder_key}")
    header = members[0].header
    return DicomSeries(
        series_uid=series_uid,
        modality=str(header.get("Modality", "") or "OT"),
        rows=rows,
        columns=columns,
        files=[m.path for m in members],
        split_key="_".join(parts),
        acquisition_number=acquisition,
        echo_number=echo,
        multiframe=bool(multiframe_key),
        samples_per_pixel=int(header.get("SamplesPerPixel", 1) or 1),
    )


def _existing_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path)
    return path


def _walk_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files.extend(Path(dirpath) / name for name in sorted(filenames))
    return files


def looks_like_dicom(path: Path) -> tuple[bool, bool]:
    """``(is_dicom, has_preamble)`` from the first bytes: a ``DICM`` preamble, or a bare dataset starting with a
    group 0002 or 0008 tag (old files written without preamble)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as err:
        raise InputError(f"cannot read file: {err.strerror}", path) from err
    if len(head) == 132 and head[128:132] == b"DICM":
        return True, True
    return head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) >= 8, False


def _read_header(path: Path) -> Dataset | None:
    """The dataset without loading large values (pixel data is deferred), ``None`` when not DICOM."""
    is_dicom, has_preamble = looks_like_dicom(path)
    if not is_dicom:
        return None
    try:
        header = pydicom.dcmread(path, defer_size=4096, force=not has_preamble)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as err:
        if not has_preamble:
            return None
        raise InputError(f"corrupt DICOM file: {one_line(err)}", path) from err
    if not has_preamble and "SOPClassUID" not in header and "Modality" not in header:
        return None  # forced reading of something that only happened to start like a tag
    if not has_preamble:
        _fill_transfer_syntax(header)
    file_meta = getattr(header, "file_meta", None)
    if has_preamble and (len(header) == 0 or file_meta is None or "TransferSyntaxUID" not in file_meta):
        raise InputError("truncated or corrupt DICOM file (incomplete file meta information or no data set)", path)
    return header


def _fill_transfer_syntax(ds: Dataset) -> None:
    """A bare data set (no file meta information): record the encoding it was read with as its transfer syntax."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        return
    if file_meta is None:
        ds.file_meta = FileMetaDataset()
    implicit, little = read_encoding(ds)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def sop_class_of(header: Dataset) -> str:
    uid = str(header.get("SOPClassUID", "") or "")
    if not uid and getattr(header, "file_meta", None) is not None:
        uid = str(header.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return uid


def _non_image_reason(header: Dataset, path: Path) -> str:
    """Why this DICOM object is not a slice to read ("" when it is one). Raises for a truncated image."""
    sop_class = sop_class_of(header)
    modality = str(header.get("Modality", "") or "")
    if sop_class.startswith(_NON_IMAGE_SOP_PREFIXES) or modality in _NON_IMAGE_MODALITIES:
        name = UID(sop_class).name if sop_class else modality
        return f"not an image object ({name})"
    has_pixels = any(k in header for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        is_image_class = "Image Storage" in UID(sop_class).name if sop_class else False
        if is_image_class or ("Rows" in header and "Columns" in header):
            raise InputError("DICOM image without pixel data (truncated or corrupt file)", path)
        return "DICOM object without pixel data"
    file_meta = getattr(header, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        raise InputError("DICOM file without a transfer syntax (truncated or corrupt file meta information)", path)
    return ""


_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _check_pixel_length(header: Dataset, path: Path) -> None:
    """Raise :class:`InputError` when the (deferred) pixel data runs past the end of the file, is shorter than
    Rows x Columns x frames needs, or (encapsulated) lacks its closing delimiter: a truncated file."""
    raw = deferred_element(header, 0x7FE00010)
    length, tell = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if length is None or tell is None:
        return  # read in full: complete as far as the header can tell
    size = path.stat().st_size
    if length == 0xFFFFFFFF:
        if max(header.keys()) == 0x7FE00010 and size >= 8:
            with open(path, "rb") as handle:
                handle.seek(-8, os.SEEK_END)
                if handle.read(8) != _SEQUENCE_DELIMITER:
                    raise InputError("truncated DICOM file: encapsulated pixel data has no end delimiter", path)
        return
    if tell + length > size:
        raise InputError(
            f"truncated DICOM file: pixel data declares {length} bytes, the file holds {max(0, size - tell)}", path
        )
    bits = int(header.get("BitsAllocated", 0) or 0)
    needed = (
        int(header.get("Rows", 0) or 0) * int(header.get("Columns", 0) or 0) * int(header.get("NumberOfFrames", 1) or 1)
        * int(header.get("SamplesPerPixel", 1) or 1) * bits + 7
    ) // 8
    if bits and length < needed:
        raise InputError(f"truncated or corrupt DICOM file: pixel data holds {length} bytes, {needed} needed", path)


# ----------------------------------------------------------------------------------------------------------------
# Reading


class UnsupportedSeriesError(InputError):
    """A well-formed image series this project cannot use as a volume (RGB, 4D, incomplete functional groups)."""


def read_series(folder: str | Path) -> list[Volume]:
    """Every image series under ``folder`` (recursively) as one :class:`Volume` each, ``(D, H, W)`` float32.

    CT values are Hounsfield units, other modalities their stored values after any rescale. Series this project
    cannot treat as a volume (RGB, several slices at one position) are skipped with a warning; if
    nothing usable is found an :class:`InputError` says why. Volumes are ordered by SeriesInstanceUID.
    """
    scan = scan_dicom(folder)
    volumes: list[Volume] = []
    unsupported: list[str] = []
    for series in scan.series:
        try:
            volumes.append(load_series(series.files))
        except UnsupportedSeriesError as err:
            logger.warning("skipped series %s: %s", series.describe(), err)
            unsupported.append(f"{series.describe()}: {err.problem}")
    if not volumes:
        raise InputError(_nothing_found(scan, unsupported), scan.root)
    return volumes


def read_dicom_folder(folder: str | Path) -> Volume:
    """The single image series under ``folder``; :class:`InputError` listing the series found when not one."""
    scan = scan_dicom(folder)
    if len(scan.series) == 1:
        return load_series(scan.series[0].files)
    if not scan.series:
        raise InputError(_nothing_found(scan, []), scan.root)
    listing = "; ".join(s.describe() for s in scan.series)
    raise InputError(
        f"holds {len(scan.series)} image series, expected one (pass a single series folder): {listing}", scan.root
    )


def read_dicom_file(path: str | Path) -> Volume:
    """One DICOM image file as a one-slice :class:`Volume`; :class:`InputError` when it is not a readable image."""
    path = _existing_path(path)
    header = _read_header(path)
    if header is None:
        raise InputError("not a DICOM file (no DICM prefix and no DICOM tags at the start)", path)
    reason = _non_image_reason(header, path)
    if reason:
        raise InputError(reason, path)
    return load_series([path])


def _nothing_found(scan: DicomScan, unsupported: list[str]) -> str:
    if unsupported:
        return "no supported DICOM image series: " + "; ".join(unsupported)
    if not scan.skipped:
        return "folder holds no files"
    non_dicom = sum(1 for s in scan.skipped if s.reason == "not a DICOM file")
    return (
        f"no DICOM image found ({len(scan.skipped)} files: {non_dicom} not DICOM, "
        f"{len(scan.skipped) - non_dicom} DICOM objects without an image)"
    )


@dataclass
class _Slice:
    path: Path
    dataset: Dataset
    values: np.ndarray  # (H, W) float32 after the modality LUT
    frame: int | None = None  # 0-based frame of a multi-frame object, None for a single-frame file
    position: np.ndarray | None = None  # ImagePositionPatient (3,), mm
    orientation: np.ndarray | None = None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing), mm
    thickness: float | None = None  # SliceThickness / SpacingBetweenSlices, mm


def load_series(files: Sequence[str | Path]) -> Volume:
    """Read the given slice files of one series into a geometry-sorted :class:`Volume`.

    Slices are sorted by ImagePositionPatient projected on the slice normal (row x column cosines). The direction's
    third column is the unit vector from the first to the last slice (so a gantry tilt shows as a shear), the z
    spacing the median distance between neighbouring slices along it, the origin the first slice's position.
    ``source_files`` keeps each slice's own file, in slice order. An enhanced (multi-frame) CT/MR object gives one
    slice per frame, with each frame's geometry and rescale from its functional groups; a legacy multi-frame object
    (NumberOfFrames > 1, no functional groups) one slice per frame in frame order, stacked along the slice normal
    from its ImagePositionPatient at SpacingBetweenSlices (else SliceThickness) where it records them. Then
    ``metadata["SourceFrameNumbers"]`` lists each slice's 1-based frame number (0: a single-frame file).
    """
    if not files:
        raise InputError("no slice files given")
    slices = [s for f in files for s in _read_slices(Path(f))]
    _check_consistent(slices)
    ordered, spacing, origin, direction, uniform = _geometry(slices)
    first = ordered[0].dataset
    array = np.stack([s.values for s in ordered])
    metadata = _metadata(first)
    metadata["SliceSpacingUniform"] = "yes" if uniform else "no"
    if any(s.frame is not None for s in ordered):
        metadata["SourceFrameNumbers"] = " ".join(str(0 if s.frame is None else s.frame + 1) for s in ordered)
    return Volume(
        array=array,
        spacing=spacing,
        origin=origin,
        direction=direction,
        modality=str(first.get("Modality", "") or "OT"),
        source_files=[s.path for s in ordered],
        metadata=metadata,
    )


def _read_slices(path: Path) -> list[_Slice]:
    """The slice of a single-frame file, or one slice per frame of a multi-frame object (enhanced or legacy)."""
    has_preamble = looks_like_dicom(path)[1]
    try:
        ds = pydicom.dcmread(path, force=not has_preamble)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"corrupt DICOM file: {one_line(err)}", path) from err
    if not has_preamble:
        _fill_transfer_syntax(ds)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnsupportedSeriesError(
            f"colour image ({ds.get('PhotometricInterpretation', '?')}, {ds.SamplesPerPixel} samples per pixel); "
            "only grey-level images are supported",
            path,
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) != frames:
        raise UnsupportedSeriesError(
            f"multi-frame image with per-frame functional groups for {len(per_frame)} of its {frames} frames", path
        )
    try:
        stored = ds.pixel_array
    except Exception as err:  # decoders raise many types; every failure becomes one clear message
        raise InputError(_decode_problem(ds, err), path) from err
    if not per_frame:
        if stored.shape[-2:] != (int(ds.Rows), int(ds.Columns)) or stored.size != frames * ds.Rows * ds.Columns:
            raise UnsupportedSeriesError(f"pixel array of shape {stored.shape}; expected {frames} grey-level "
                                         f"frame(s) of {ds.Rows}x{ds.Columns}", path)
        return _legacy_slices(path, ds, stored.reshape(frames, *stored.shape[-2:]), frames)
    stored = stored.reshape(frames, *stored.shape[-2:])
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    return [_frame_slice(path, ds, stored[i], i, per_frame[i], shared) for i in range(frames)]


def _legacy_slices(path: Path, ds: Dataset, stored: np.ndarray, frames: int) -> list[_Slice]:
    """The slice of a single-frame image, or one slice per frame of a legacy multi-frame object (no functional
    groups: every frame shares the object's attributes). Frame ``k`` (0-based) of such an object lies ``k``
    SpacingBetweenSlices (else SliceThickness) along the slice normal from the object's ImagePositionPatient, when
    it records a position, an orientation and a spacing; else its frames have no position and keep frame order."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    dz = float(thickness) if thickness else None
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if frames == 1:
        return [_Slice(path=path, dataset=ds, values=values[0], position=position, orientation=orientation,
                       pixel_spacing=_spacing(ds), thickness=dz)]
    step = None
    if position is not None and orientation is not None and dz:
        normal = np.cross(orientation[:3], orientation[3:])
        step = dz * normal / (np.linalg.norm(normal) or 1.0)
    return [_Slice(
        path=path, dataset=ds, values=values[k], frame=k,
        position=None if step is None else position + k * step,  # type: ignore[operator]
        orientation=orientation, pixel_spacing=_spacing(ds), thickness=dz,
    ) for k in range(frames)]


def _frame_slice(path: Path, ds: Dataset, stored: np.ndarray, index: int, own: Dataset, shared: Dataset) -> _Slice:
    def item(sequence: str) -> Dataset:
        for groups in (own, shared):
            if groups.get(sequence):
                return groups[sequence].value[0]
        return Dataset()

    plane, orientation, measures = item("PlanePositionSequence"), item("PlaneOrientationSequence"), item(
        "PixelMeasuresSequence")
    transform = item("PixelValueTransformationSequence")
    if "RescaleSlope" in transform or "RescaleIntercept" in transform:
        slope = float(transform.get("RescaleSlope", 1) or 1)
        intercept = float(transform.get("RescaleIntercept", 0) or 0)
        values = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    else:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    thickness = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness")
    return _Slice(
        path=path, dataset=ds, values=values, frame=index,
        position=_floats(plane.get("ImagePositionPatient"), 3),
        orientation=_floats(orientation.get("ImageOrientationPatient"), 6),
        pixel_spacing=_spacing(measures), thickness=float(thickness) if thickness else None,
    )


def _floats(values: object, count: int) -> np.ndarray | None:
    if values is None or len(values) != count:  # type: ignore[arg-type]
        return None
    return np.asarray([float(v) for v in values], dtype=np.float64)  # type: ignore[union-attr]


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None


def _decode_problem(ds: Dataset, err: BaseException) -> str:
    file_meta = getattr(ds, "file_meta", None)
    tsuid = UID(str(file_meta.get("TransferSyntaxUID", "") or "")) if file_meta is not None else UID("")
    ts_name = tsuid.name if tsuid else "<missing transfer syntax>"
    base = f"cannot decode pixel data in transfer syntax {ts_name}"
    if not tsuid:
        return f"{base}: the file meta information is incomplete"
    available = decoder_available(tsuid)
    if available is None:
        return f"{base}: no decoder exists for this transfer syntax"
    if not available:
        package = _DECODER_PACKAGES.get(str(tsuid), "a pydicom pixel data plugin")
        return f"{base}: install {package}"
    return f"{base}: the pixel data is corrupt or truncated ({one_line(err)})"


def _check_consistent(slices: list[_Slice]) -> None:
    shapes = {s.values.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"slices of different sizes in one series: {sorted(shapes)}", slices[0].path.parent)


def _geometry(
    slices: list[_Slice],
) -> tuple[list[_Slice], tuple[float, float, float], tuple[float, float, float], tuple[float, ...], bool]:
    first = slices[0]
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    nominal_dz = first.thickness or 1.0
    have_geometry = all(s.position is not None and s.orientation is not None for s in slices)
    if not have_geometry:
        if len({s.path for s in slices}) == 1 and len(slices) > 1:
            logger.info("multi-frame object %s records no frame positions: frames kept in frame order",
                        first.path.name)
        elif len(slices) > 1:
            logger.warning(
                "series %s has no ImagePositionPatient/ImageOrientationPatient: slices ordered by InstanceNumber",
                first.dataset.get("SeriesInstanceUID", ""),
            )
        ordered = sorted(
            slices, key=lambda s: (int(s.dataset.get("InstanceNumber") or 0), str(s.path), s.frame or 0)
        )
        identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        return ordered, (dx, dy, abs(nominal_dz) or 1.0), (0.0, 0.0, 0.0), identity, True

    iop = first.orientation
    assert iop is not None
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.asarray([s.position for s in slices], dtype=np.float64)
    along_normal = positions @ normal
    order = np.argsort(along_normal, kind="stable")
    ordered = [slices[i] for i in order]
    positions = positions[order]
    gaps = np.diff(along_normal[order])
    if len(gaps) and np.min(gaps) < _POSITION_TOLERANCE_MM:
        distinct = len(np.unique(np.round(along_normal / _POSITION_TOLERANCE_MM)))
        raise UnsupportedSeriesError(
            f"{len(slices)} slices at {distinct} distinct positions (4D, multi-echo or duplicated slices); "
            "split the series first",
            ordered[0].path.parent,
        )
    slice_dir = normal
    if len(ordered) > 1:
        span = positions[-1] - positions[0]
        candidate = span / np.linalg.norm(span)
        if abs(candidate @ normal) > 0.5:  # tilt below 60 degrees: a real stacking direction
            slice_dir = candidate
    if len(ordered) > 1:
        steps = np.diff(positions @ slice_dir)
        dz = float(np.median(steps))
        uniform = bool(np.allclose(steps, dz, rtol=0.01, atol=0.01))
    else:
        dz, uniform = abs(nominal_dz) or 1.0, True
    direction = np.column_stack([row, col, slice_dir])
    return (
        ordered,
        (dx, dy, dz),
        tuple(float(v) for v in positions[0]),
        tuple(float(v) for v in direction.ravel()),
        uniform,
    )


def _metadata(ds: Dataset) -> dict[str, str]:
    """Non-identifying descriptive values of a slice (UIDs, modality, encoding); never names, IDs or dates."""
    meta: dict[str, str] = {}
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality"):
        value = ds.get(keyword)
        if value:
            meta[keyword] = str(value)
    sop_class = sop_class_of(ds)
    if sop_class:
        meta["SOPClassUID"] = sop_class
    file_meta = getattr(ds, "file_meta", None)
    tsuid = str(file_meta.get("TransferSyntaxUID", "") or "") if file_meta is not None else ""
    if tsuid:
        meta["TransferSyntaxUID"] = tsuid
        meta["TransferSyntax"] = UID(tsuid).name
    meta["Rows"] = str(int(ds.Rows))
    meta["Columns"] = str(int(ds.Columns))
    for keyword in ("PhotometricInterpretation", "RescaleType", "LossyImageCompression"):
        value = ds.get(keyword)
        if value:
            meta[keyword] = str(value)
    image_type = ds.get("ImageType")
    if image_type:
        meta["ImageType"] = "\\".join(str(v) for v in image_type)
    return meta


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] if text else type(err).__name__
