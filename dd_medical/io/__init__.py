"""Reading and writing volumes: DICOM series (in and derived out, in a lossless transfer syntax:
:mod:`dd_medical.io.transfer_syntax`), NIfTI / NRRD / MetaImage, raw measurements (:mod:`dd_medical.io.raw`),
provenance, uncertainty maps (:mod:`dd_medical.io.dicom_uncertainty`), atomic outputs.

```python
from dd_medical.io import read_volume, write_series

volume = read_volume("patient/ct_series")        # (D, H, W) float32 HU, geometry, source files
files = write_series(volume.with_array(denoised), "out/ct_denoised", series_description="CT denoised (DD)")
```
"""

from __future__ import annotations

from pathlib import Path

from dd_medical.errors import InputError
from dd_medical.io.atomic import atomic_output_dir, atomic_output_file
from dd_medical.io.dicom import (
    DicomScan,
    DicomSeries,
    SkippedFile,
    load_series,
    read_dicom_file,
    read_dicom_folder,
    read_series,
    scan_dicom,
)
from dd_medical.io.dicom_uncertainty import write_uncertainty_series
from dd_medical.io.dicom_write import write_lossy_series, write_series
from dd_medical.io.image import IMAGE_SUFFIXES, is_image_path, read_image, write_image
from dd_medical.io.output import OUTPUT_FORMATS, check_output, output_format, write_uncertainty, write_volume
from dd_medical.io.provenance import derivation_description, uncertainty_derivation, uncertainty_series_description
from dd_medical.io.transfer_syntax import TRANSFER_SYNTAXES, resolve_transfer_syntax
from dd_medical.io.validate import validate_derived
from dd_medical.volume import Volume

__all__ = [
    "IMAGE_SUFFIXES",
    "OUTPUT_FORMATS",
    "TRANSFER_SYNTAXES",
    "DicomScan",
    "DicomSeries",
    "SkippedFile",
    "atomic_output_dir",
    "atomic_output_file",
    "check_output",
    "derivation_description",
    "is_image_path",
    "load_series",
    "output_format",
    "read_image",
    "read_series",
    "read_volume",
    "resolve_transfer_syntax",
    "scan_dicom",
    "uncertainty_derivation",
    "uncertainty_series_description",
    "validate_derived",
    "write_image",
    "write_lossy_series",
    "write_series",
    "write_uncertainty",
    "write_uncertainty_series",
    "write_volume",
]


def read_volume(path: str | Path) -> Volume:
    """One volume from ``path``: a folder holding exactly one DICOM image series, a single DICOM file (one slice),
    or an image file ending in one of :data:`IMAGE_SUFFIXES`.

    Returns a :class:`Volume` with ``(D, H, W)`` float32 values (HU for CT) and its geometry. Raises
    :class:`~dd_medical.errors.InputError` for a missing path, a folder with no or several image series (the
    message lists their UIDs), or a file that is neither DICOM nor a supported image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path)
    if path.is_dir():
        return read_dicom_folder(path)
    if is_image_path(path):
        return read_image(path)
    return read_dicom_file(path)
