"""A MONAI ``ImageWriter`` that saves an image loaded from a DICOM series as a derived DICOM series.

MONAI has no DICOM writer. :class:`DicomSeriesWriter` rebuilds the source series from the file names that
``LoadImage`` (``PydicomReader`` or ``ITKReader``) recorded in ``meta["filename_or_obj"]``, puts the image back
on the source slices' grid and writes it with :func:`dd_medical.io.write_series`: new Series/SOP UIDs, same
patient, study and geometry, ImageType ``DERIVED``, one file per source slice.

Name it in ``SaveImage(output_ext=".dcm", writer=DicomSeriesWriter)``, or
``writer="dd_medical.monai_writer.DicomSeriesWriter"`` in a bundle config. Importing this module changes nothing in
MONAI; :func:`register` (called once, explicitly) makes it MONAI's writer for the ``"dcm"`` extension in this
process, so that ``SaveImage(output_ext=".dcm")`` finds it without ``writer``.

A DICOM series is a folder: the file name MONAI builds (``<output_dir>/<name>/<name>_<postfix>.dcm``) becomes
the folder ``<output_dir>/<name>/<name>_<postfix>/`` holding ``IM0001.dcm`` ... in slice order, next to the
NIfTI file another ``SaveImage`` writes there. It must not exist yet (or be empty) unless the writer is given
``overwrite=True`` (``SaveImage.set_options(init_kwargs={"overwrite": True})``), which replaces a previous series
as a whole; it appears only when complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import NdarrayOrTensor, PathLike
from monai.data import image_writer
from monai.data.image_writer import ImageWriter, register_writer
from monai.data.utils import orientation_ras_lps
from monai.utils import GridSampleMode, GridSamplePadMode, MetaKeys, SpaceKeys, convert_data_type

from .errors import InputError
from .volume import Volume

__all__ = ["DicomSeriesWriter", "register", "series_folder", "source_affine"]

DCM_EXT = "dcm"


def series_folder(filename: PathLike) -> Path:
    """The folder that receives the series for the file name ``SaveImage`` asks for (``.dcm`` dropped)."""
    path = Path(filename)
    return path.with_suffix("") if path.suffix.lower() == f".{DCM_EXT}" else path


def source_affine(volume: Volume, space: str = SpaceKeys.RAS) -> np.ndarray:
    """4x4 affine of ``volume`` as MONAI's readers give it: array axes ``(x, y, z)`` = ``array.transpose(2, 1, 0)``,
    millimetres, in ``space`` (``"RAS"``, MONAI's default, or ``"LPS"``, DICOM's)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3) * np.asarray(volume.spacing)
    affine[:3, 3] = volume.origin
    return orientation_ras_lps(affine) if str(space) == SpaceKeys.RAS else affine


def _source_volume(meta: Mapping) -> Volume:
    """The source series named by ``meta["filename_or_obj"]``: a folder, one file, or a list of slice files."""
    from .io import load_series, read_volume

    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)) and len(source) == 1:
        source = source[0]
    if isinstance(source, (list, tuple)) and source:
        return load_series([Path(str(s)) for s in source])
    if isinstance(source, (str, Path)) and str(source):
        return read_volume(source)
    raise InputError(
        "the image's metadata names no DICOM source (filename_or_obj); the DICOM writer derives a series from the "
        "source slices, so load the image with LoadImage from a DICOM folder or files"
    )


class DicomSeriesWriter(ImageWriter):
    """
    Write a single-channel image as a derived DICOM series of the DICOM series it was loaded from.

    .. code-block:: python

        from monai.transforms import SaveImage
        from dd_medical.monai_writer import DicomSeriesWriter

        SaveImage(output_dir="out", output_postfix="dd", output_ext=".dcm", writer=DicomSeriesWriter)(image)

    The image (``(1, H, W, D)`` or ``(1, H, W)`` channel-first, values in HU for CT) must carry MONAI metadata:
    ``filename_or_obj`` (the source folder or files) and ``affine``. It is mapped onto the source slices' grid
    with :meth:`ImageWriter.resample_if_needed` (only transposes and flips unless the image was resampled, in
    which case it is interpolated with ``mode``) and written with :func:`dd_medical.io.write_series`: int16 with
    a rescale that keeps the values (``output_dtype`` and ``scale`` of ``SaveImage`` are ignored). The derivation
    description is taken from ``meta["dd_medical"]`` when a dd-medical transform produced the image. An uncertainty
    map (``meta["dd_medical"]["output"] == "uncertainty"``, from ``DeepDecoderDenoised(uncertainty=True)``) is
    written as one (:func:`dd_medical.io.dicom_uncertainty.write_uncertainty_series`: unsigned 16-bit in steps of
    0.1 HU for CT, DerivationCode "Standard Deviation"), its default SeriesDescription the denoised one's plus
    ``" uncertainty (SD, HU)"``.

    Args:
        output_dtype: accepted for ``SaveImage`` and ignored (pixels are always int16 with a rescale).
        scale: accepted for ``SaveImage`` and ignored.
        series_description: SeriesDescription of the new series; default: the source's, plus ``" DD denoised"``
            (and ``" uncertainty (SD, <units>)"`` for an uncertainty map).
        org_root: UID prefix (default: pydicom's ``2.25.`` UUID form).
        overwrite: replace a series folder that exists already (as a whole, once the new one is complete);
            default ``False``: an existing non-empty folder is an error. ``SaveImage`` passes it with
            ``set_options(init_kwargs={"overwrite": True})``.
    """

    def __init__(
        self,
        output_dtype: Any = None,
        scale: int | None = None,
        series_description: str | None = None,
        org_root: str | None = None,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            output_dtype=output_dtype, scale=scale, series_description=series_description, org_root=org_root,
            overwrite=overwrite, affine=None, meta={}, resample_options={}, **kwargs,
        )

    def set_data_array(
        self, data_array: NdarrayOrTensor, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs: Any
    ) -> None:
        """Keep ``data_array`` as ``(H, W, D)`` (a 2D image gets ``D = 1``); it must have one channel."""
        channels = 1 if channel_dim is None else int(data_array.shape[channel_dim])
        if channels != 1:
            raise InputError(f"the DICOM writer saves one channel, got an image of shape {tuple(data_array.shape)}")
        data = self.convert_to_channel_last(data_array, channel_dim=channel_dim, squeeze_end_dims=False, spatial_ndim=3)
        self.data_obj = data[..., 0]

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options: Any) -> None:
        """Keep the metadata (source files, affine, ``dd_medical`` record) and the interpolation options.

        ``resample`` is ignored: a derived series always lies on its source slices.
        """
        self.meta = dict(meta_dict or {})
        _, self.affine, _ = self.get_meta_info(self.meta)
        self.resample_options = {
            "mode": options.pop("mode", GridSampleMode.NEAREST),
            "padding_mode": options.pop("padding_mode", GridSamplePadMode.BORDER),
            "align_corners": options.pop("align_corners", False),
            "dtype": options.pop("dtype", np.float64),
        }

    def write(self, filename: PathLike, verbose: bool = False, **kwargs: Any) -> list[Path]:
        """Write the series into :func:`series_folder` ``(filename)``; returns the files written."""
        from .io import write_series
        from .io.dicom_uncertainty import write_uncertainty_series
        from .io.provenance import uncertainty_series_description

        super().write(filename, verbose=verbose)
        if self.data_obj is None:
            raise InputError("no image to write: call set_data_array first")
        source = _source_volume(self.meta)
        hu = self.on_source_grid(source)
        record = self.meta.get("dd_medical")
        record = record if isinstance(record, Mapping) else {}
        description = str(record.get("description", ""))
        series_description = self.series_description
        denoised = f"{source.metadata.get('SeriesDescription', '')} DD denoised".strip()
        if record.get("output") != "uncertainty":
            return write_series(
                source.with_array(hu), series_folder(filename), series_description=series_description or denoised,
                derivation_description=description, org_root=self.org_root, overwrite=bool(self.overwrite),
            )
        units = str(record.get("units") or ("HU" if source.modality == "CT" else "stored values"))
        return write_uncertainty_series(
            source.with_array(hu), series_folder(filename),
            series_description=series_description or uncertainty_series_description(denoised, units),
            derivation_description=description, org_root=self.org_root, overwrite=bool(self.overwrite), units=units,
        )

    def on_source_grid(self, source: Volume) -> np.ndarray:
        """The image as ``(D, H, W)`` float32 in the source volume's slice order."""
        data = convert_data_type(self.data_obj, np.ndarray)[0]
        space = self.meta.get(MetaKeys.SPACE, SpaceKeys.RAS)
        target = source_affine(source, space)
        affine = target if self.affine is None else convert_data_type(self.affine, np.ndarray)[0]
        shape = tuple(reversed(source.shape))  # (x, y, z)
        if np.allclose(affine, target, atol=1e-4) and tuple(data.shape) == shape:
            xyz = data
        else:
            xyz, _ = self.resample_if_needed(
                data, affine=affine, target_affine=target, output_spatial_shape=shape, **self.resample_options
            )
            xyz = convert_data_type(xyz, np.ndarray)[0]
        if tuple(xyz.shape) != shape:
            raise InputError(f"image of spatial shape {tuple(data.shape)} does not map onto its source series "
                             f"{shape} (x, y, z)")
        return np.ascontiguousarray(np.transpose(xyz, (2, 1, 0)), dtype=np.float32)


def register(extensions: Sequence[str] = (DCM_EXT,)) -> None:
    """Make :class:`DicomSeriesWriter` MONAI's first choice for ``extensions`` in this process, so that
    ``SaveImage(output_ext=".dcm")`` uses it without ``writer=...``. Explicit: importing dd-medical registers
    nothing. Calling it again changes nothing."""
    if not image_writer.SUPPORTED_WRITERS:
        image_writer.init()  # MONAI fills its defaults only while the table is empty: keep NIfTI etc. working
    for ext in extensions:
        if DicomSeriesWriter not in image_writer.SUPPORTED_WRITERS.get(ext, ()):
            register_writer(ext, DicomSeriesWriter)
