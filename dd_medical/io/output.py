"""Where results go: an image file by extension, else a folder for a derived DICOM series; checked before work."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..volume import Volume
from .atomic import full_suffix
from .dicom_uncertainty import write_uncertainty_series
from .dicom_write import write_series
from .image import IMAGE_SUFFIXES, write_image

#: What an output path can receive: a derived DICOM series (a folder) or an image file.
OUTPUT_FORMATS = ("dicom", "image")


def output_format(output_path: str | Path, format: str | None = None) -> str:
    """``"image"`` for a file name ending in :data:`IMAGE_SUFFIXES`, ``"dicom"`` for a folder (a name without an
    extension, or any name with ``format="dicom"``); :class:`InputError` for an unknown extension."""
    if format not in (None, *OUTPUT_FORMATS):
        raise InputError(f"unknown output format {format!r}; choose {' or '.join(OUTPUT_FORMATS)}")
    suffix = full_suffix(output_path)
    if format == "dicom":
        return "dicom"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if format == "image" or suffix:
        raise InputError(f"unknown output extension {suffix or '(none)'!r}: an image file ends in "
                         f"{', '.join(IMAGE_SUFFIXES)}; a DICOM series is a folder (no extension, or --format dicom)",
                         output_path)
    return "dicom"


def check_output(output_path: str | Path, input_path: str | Path | None = None, format: str | None = None) -> str:
    """Refuse, before any computation, an output that already exists (a file, or a folder that is not empty), that
    is the input (inputs are never modified) or whose kind is unknown; returns :func:`output_format`."""
    output_path = Path(output_path)
    kind = output_format(output_path, format)
    if output_path.exists() and (output_path.is_file() or any(output_path.iterdir())):
        raise InputError("output already exists (refusing to overwrite)", output_path)
    if input_path is not None and output_path.resolve() == Path(input_path).resolve():
        raise InputError("output is the input (inputs are never modified)", output_path)
    return kind


def write_volume(volume: Volume, output_path: str | Path, *, series_description: str, derivation_description: str,
                 org_root: str | None = None, overwrite: bool = False, format: str | None = None,
                 transfer_syntax: str | None = None) -> list[Path]:
    """Write ``volume`` to an image file or, as a derived DICOM series in ``transfer_syntax`` (:func:`write_series`;
    default ``"auto"``), to a folder (:func:`output_format`). Atomic. Returns the files written."""
    if output_format(output_path, format) == "image":
        return [write_image(volume, output_path, overwrite=overwrite)]
    return write_series(volume, output_path, series_description=series_description,
                        derivation_description=derivation_description, org_root=org_root, overwrite=overwrite,
                        transfer_syntax=transfer_syntax)


def write_uncertainty(sd: Volume, output_path: str | Path, *, series_description: str, derivation_description: str,
                      denoised: str | Path | None = None, units: str | None = None, org_root: str | None = None,
                      overwrite: bool = False, format: str | None = None,
                      transfer_syntax: str | None = None) -> list[Path]:
    """Write an uncertainty map ``sd`` (standard deviations >= 0 in ``units``: HU for CT) to an image file (float32)
    or, as a derived DICOM series, to a folder (:func:`output_format`) derived from and referencing the ``denoised``
    DICOM series it belongs to when given (:func:`~dd_medical.io.dicom_uncertainty.write_uncertainty_series`).
    Atomic. Returns the files written."""
    if output_format(output_path, format) == "image":
        return [write_image(sd, output_path, overwrite=overwrite)]
    return write_uncertainty_series(sd, output_path, series_description=series_description,
                                    derivation_description=derivation_description, denoised=denoised, units=units,
                                    org_root=org_root, overwrite=overwrite, transfer_syntax=transfer_syntax)
