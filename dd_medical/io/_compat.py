"""pydicom 2.4 and 3.x behind one set of functions, so that ``dd_medical.io`` runs on both.

3D Slicer up to 5.10 bundles pydicom 2.4 and its DICOM modules need it; installing dd-medical into Slicer must not
replace it. Every pydicom call that differs between the two majors goes through this module:

- where things live: ``apply_modality_lut`` (``pydicom.pixels`` in 3, ``pydicom.pixel_data_handlers.util`` in 2),
  encoders (``pydicom.pixels.get_encoder`` in 3, ``pydicom.encoders.get_encoder`` in 2), decoders (a registry in 3,
  pixel data handlers in 2);
- what 3 added: ``Dataset.set_pixel_data`` (:func:`set_pixel_data`), ``save_as(enforce_file_format=True)``
  (:func:`save`), ``Dataset.original_encoding`` (:func:`read_encoding`), and the JPEG 2000 / JPEG-LS encoders
  (on pydicom 2 only RLE Lossless is encoded; :func:`encoder_available` says so and a derived series falls back to
  Explicit VR Little Endian, see :mod:`dd_medical.io.transfer_syntax`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

#: The installed pydicom's major version (2 or 3).
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

if PYDICOM_MAJOR >= 3:
    from pydicom.pixels import apply_modality_lut, get_decoder, get_encoder
else:  # pragma: no cover - exercised by the CI job that runs the io tests under pydicom 2.4
    from pydicom.encoders import get_encoder
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    get_decoder = None

__all__ = ["PYDICOM_MAJOR", "apply_modality_lut", "decoder_available", "encoder_available", "read_encoding",
           "deferred_element", "save", "set_pixel_data", "compress"]


def decoder_available(uid: UID) -> bool | None:
    """Whether pixel data in transfer syntax ``uid`` can be decoded here: ``True``, ``False`` (a decoder exists
    but its package is not installed), or ``None`` (no decoder exists for this syntax in this pydicom)."""
    if get_decoder is not None:
        try:
            return bool(get_decoder(uid).is_available)
        except (NotImplementedError, ValueError):
            return None
    handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(uid)]
    if not handlers:
        return None
    return any(h.is_available() for h in handlers)


def encoder_available(uid: UID) -> bool | None:
    """Whether pixel data can be encoded in transfer syntax ``uid`` here: ``True``, ``False`` (an encoder exists but
    its package is not installed), or ``None`` (this pydicom has no encoder for it: pydicom 2 encodes only RLE
    Lossless)."""
    try:
        return bool(get_encoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return None


def read_encoding(ds: Dataset) -> tuple[bool | None, bool | None]:
    """``(implicit_vr, little_endian)`` of the encoding ``ds`` was read with (``None`` when unknown)."""
    if PYDICOM_MAJOR >= 3:
        return ds.original_encoding
    return getattr(ds, "read_implicit_vr", None), getattr(ds, "read_little_endian", None)


def deferred_element(ds: Dataset, tag: int):
    """The element ``tag`` of ``ds`` as read, without reading a deferred value (``dcmread(defer_size=...)``): its
    ``length`` and ``value_tell`` say where the value lies in the file. ``None`` when absent."""
    if PYDICOM_MAJOR >= 3:
        try:
            return ds.get_item(tag, keep_deferred=True)
        except KeyError:
            return None
    return ds._dict.get(Tag(tag))


def set_pixel_data(ds: Dataset, arr: np.ndarray, photometric_interpretation: str, bits_stored: int) -> None:
    """Pixels ``arr`` as uncompressed Pixel Data with the Image Pixel attributes that describe them
    (``Dataset.set_pixel_data`` of pydicom 3, without a new SOP Instance UID): int8/uint8/int16/uint16, shaped
    (rows, columns) or (frames, rows, columns) for grey levels, (rows, columns, 3) or (frames, rows, columns, 3) for
    ``"RGB"``. The transfer syntax becomes Explicit VR Little Endian when it is missing or compressed."""
    if PYDICOM_MAJOR >= 3:
        ds.set_pixel_data(arr, photometric_interpretation, bits_stored, generate_instance_uid=False)
        return
    samples = 3 if photometric_interpretation == "RGB" else 1
    frame_ndim = 2 if samples == 1 else 3
    if arr.ndim not in (frame_ndim, frame_ndim + 1) or arr.dtype.kind not in "iu" or arr.dtype.itemsize not in (1, 2):
        raise ValueError(f"{photometric_interpretation} pixels must be {frame_ndim}D or {frame_ndim + 1}D "
                         f"int8/uint8/int16/uint16, not {arr.ndim}D {arr.dtype}")
    if arr.ndim > frame_ndim:
        ds.NumberOfFrames = arr.shape[0]
    elif "NumberOfFrames" in ds:
        del ds.NumberOfFrames
    if samples > 1:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    ds.Rows, ds.Columns = arr.shape[-3:-1] if samples > 1 else arr.shape[-2:]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric_interpretation
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0 if arr.dtype.kind == "u" else 1
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    ds.PixelData = data if len(data) % 2 == 0 else data + b"\x00"
    ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds._pixel_array = None
    ds._pixel_id = {}
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax or UID(syntax).is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def compress(ds: Dataset, uid: UID, arr: np.ndarray) -> None:
    """Encode the uncompressed pixels ``arr`` of ``ds`` in the compressed transfer syntax ``uid``, in place (no new
    SOP Instance UID). Check :func:`encoder_available` first."""
    if PYDICOM_MAJOR >= 3:
        ds.compress(uid, generate_instance_uid=False)
    else:
        ds.compress(uid, np.ascontiguousarray(arr))


def save(ds: Dataset, path: str | Path, *, implicit_vr: bool | None = None, little_endian: bool | None = None,
         file_format: bool = True) -> None:
    """Write ``ds`` to ``path``. ``file_format=True``: a DICOM file (preamble, ``DICM``, file meta information) in
    the encoding of its file meta Transfer Syntax UID (``save_as(..., enforce_file_format=True)`` of pydicom 3).
    ``file_format=False``: the data set alone (an old ACR-NEMA style file) in the encoding given by ``implicit_vr``
    and ``little_endian``."""
    if PYDICOM_MAJOR >= 3:
        ds.save_as(path, implicit_vr=implicit_vr, little_endian=little_endian, enforce_file_format=file_format)
        return
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if implicit_vr is None and syntax:
        implicit_vr, little_endian = UID(syntax).is_implicit_VR, UID(syntax).is_little_endian
    ds.is_implicit_VR, ds.is_little_endian = implicit_vr, True if little_endian is None else little_endian
    if not file_format:
        ds.preamble = None
        saved_meta = ds.file_meta if hasattr(ds, "file_meta") else None
        ds.file_meta = FileMetaDataset()
        try:
            pydicom.dcmwrite(str(path), ds, write_like_original=True)
        finally:
            if saved_meta is not None:
                ds.file_meta = saved_meta
        return
    pydicom.dcmwrite(str(path), ds, write_like_original=False)
