"""NIfTI, NRRD and MetaImage volumes through SimpleITK, with their geometry."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dd_medical.errors import InputError
from dd_medical.io.atomic import atomic_output_file, full_suffix
from dd_medical.volume import Volume

#: File name endings read and written by :func:`read_image` / :func:`write_image`.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Formats whose header names a separate data file (written beside it).
_DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
_METAIMAGE_MODALITIES = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}


def is_image_path(path: str | Path) -> bool:
    """Whether ``path`` ends with one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return full_suffix(path) in IMAGE_SUFFIXES


def read_image(path: str | Path, *, modality: str | None = None) -> Volume:
    """Read a NIfTI / NRRD / MetaImage file into a :class:`Volume` (``(D, H, W)`` float32, geometry kept).

    A 2D image becomes one slice (``D = 1``, z spacing 1 mm); a 4D image with a single time point is squeezed to
    3D. ``modality`` sets :attr:`Volume.modality` (these formats rarely record it; MetaImage's ``Modality`` field is
    used when present, else ``"OT"``). Values are those SimpleITK returns (NIfTI ``scl_slope``/``scl_inter``
    applied). Raises :class:`InputError` for a missing or unreadable file, multi-component (RGB, vector) pixels
    or a true 4D image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path)
    if path.is_dir():
        raise InputError("is a folder, not an image file", path)
    if not is_image_path(path):
        raise InputError(f"not a supported image file (expected one of {', '.join(IMAGE_SUFFIXES)})", path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(f"cannot read image: {_first_line(err)}", path) from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"has {image.GetNumberOfComponentsPerPixel()} components per pixel (RGB or vector image); "
            "only single-channel (grey-level) images are supported",
            path,
        )
    image = _to_3d(image, path)
    if modality is None:
        modality = "OT"
        if reader.HasMetaDataKey("Modality"):
            modality = _METAIMAGE_MODALITIES.get(reader.GetMetaData("Modality").strip(), "OT")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
        modality=modality,
        metadata={"SourceFormat": full_suffix(path).lstrip(".")},
    )


def _to_3d(image: sitk.Image, path: Path) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 3:
        return image
    if dim == 2:
        array = sitk.GetArrayFromImage(image)[None]
        out = sitk.GetImageFromArray(array)
        d = image.GetDirection()
        out.SetSpacing((*image.GetSpacing(), 1.0))
        out.SetOrigin((*image.GetOrigin(), 0.0))
        out.SetDirection((d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0))
        return out
    if dim == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0  # extract: collapse the 4th axis
        return sitk.Extract(image, size, [0, 0, 0, 0])
    raise InputError(
        f"is a {dim}D image of size {'x'.join(str(s) for s in image.GetSize())}; only 2D and 3D images are supported",
        path,
    )


def write_image(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``volume`` (float32 values, geometry kept) to ``path``; the format follows the file name ending.

    Supported endings: :data:`IMAGE_SUFFIXES`. The file appears only when complete (temporary file in the same
    folder, then renamed); ``.mhd``/``.nhdr`` also write their data file beside the header. An existing ``path``
    raises :class:`InputError` unless ``overwrite=True``. NIfTI cannot store a sheared geometry (gantry tilt):
    such a volume raises :class:`InputError` for ``.nii``/``.nii.gz`` (use ``.nrrd`` or ``.mha``). Returns the path.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"cannot write this format (expected one of {', '.join(IMAGE_SUFFIXES)})", path)
    image = volume_to_sitk(volume)
    if suffix in (".nii", ".nii.gz") and not _is_orthonormal(volume.direction):
        raise InputError(
            "NIfTI cannot store this volume's non-orthogonal (sheared, e.g. gantry-tilted) direction; "
            "write .nrrd or .mha instead",
            path,
        )
    compress = suffix != ".nii"  # .nii.gz is compressed by definition; the others take compression as an option
    if suffix in _DETACHED_HEADER_SUFFIXES:
        return _write_detached(image, path, compress=compress, overwrite=overwrite)
    with atomic_output_file(path, overwrite=overwrite) as tmp_path:
        _sitk_write(image, tmp_path, compress=compress)
    return path


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A 3D float32 SimpleITK image with the volume's spacing, origin and direction."""
    image = sitk.GetImageFromArray(np.asarray(volume.array, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction))
    return image


def _sitk_write(image: sitk.Image, path: Path, *, compress: bool) -> None:
    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as err:
        raise InputError(f"cannot write image: {_first_line(err)}", path) from err


def _write_detached(image: sitk.Image, path: Path, *, compress: bool, overwrite: bool) -> Path:
    """Header + data file: write both under their final names in a temporary folder, then move data, then header."""
    path = path.absolute()
    if path.exists() and not overwrite:
        raise InputError("output file already exists (refusing to overwrite)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp_dir.mkdir()
    try:
        _sitk_write(image, tmp_dir / path.name, compress=compress)
        data_files = [f for f in tmp_dir.iterdir() if f.name != path.name]
        for data_file in data_files:
            os.replace(data_file, path.parent / data_file.name)
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _is_orthonormal(direction: tuple[float, ...], tol: float = 1e-4) -> bool:
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return bool(np.allclose(matrix.T @ matrix, np.eye(3), atol=tol))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # ITK messages start with a file/line location; the description is usually the last line.
    return lines[-1] if lines else type(err).__name__
