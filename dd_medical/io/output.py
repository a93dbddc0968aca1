"""Where results go: an image file by extension, else a folder for a derived DICOM series; checked before work."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..volume import Volume
from .dicom_write import write_series
from .image import is_image_path, write_image


def check_output(output_path: str | Path, input_path: str | Path | None = None) -> Path:
    """Refuse, before any computation, an output that already exists (a file, or a folder that is not empty) or
    that is the input (inputs are never modified)."""
    output_path = Path(output_path)
    if output_path.exists() and (output_path.is_file() or any(output_path.iterdir())):
        raise InputError("output already exists (refusing to overwrite)", output_path)
    if input_path is not None and output_path.resolve() == Path(input_path).resolve():
        raise InputError("output is the input (inputs are never modified)", output_path)
    return output_path


def write_volume(volume: Volume, output_path: str | Path, *, series_description: str, derivation_description: str,
                 org_root: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``volume`` to an image file (``.nii.gz``, ``.nrrd``, ``.mha``, ...: :func:`is_image_path`) or, for any
    other path, as a derived DICOM series in that folder (:func:`write_series`). Atomic. Returns the files."""
    if is_image_path(output_path):
        return [write_image(volume, output_path, overwrite=overwrite)]
    return write_series(volume, output_path, series_description=series_description,
                        derivation_description=derivation_description, org_root=org_root, overwrite=overwrite)
