"""An uncertainty map (per-voxel standard deviation) as a derived DICOM series beside the image it belongs to.

With the denoised (or reconstructed) series given, every map image is derived from the denoised image at its place:
same patient, study, frame of reference, slice geometry and SOP class, a new series. What the map says about
itself:

- SeriesDescription ``"<denoised description> uncertainty (SD, HU)"`` and a DerivationDescription saying what the
  values are, how they are stored and how the denoised image was made
  (:func:`~dd_medical.io.provenance.uncertainty_series_description`,
  :func:`~dd_medical.io.provenance.uncertainty_derivation`);
- ImageType ``DERIVED\\SECONDARY`` (the denoised image's other values); DerivationCodeSequence (113061, DCM,
  "Standard Deviation") before the denoising's (113087, DCM, "Smoothing");
- SourceImageSequence: the denoised image's own sources (the images the decoders were fitted to; the denoised image
  itself when it has none, e.g. a NIfTI input); ReferencedImageSequence: the denoised image at the same place
  (added to any the source had); ReferencedSeriesSequence (Common Instance Reference): the denoised series and that
  image;
- pixels: unsigned 16-bit, RescaleIntercept 0, RescaleSlope the step of one stored value (:func:`encode_sd`: CT
  :data:`CT_STEP` HU), RescaleType ``HU`` for CT (``US`` otherwise), no negative values; a window (WindowCenter /
  WindowWidth) from 0 to the map's 99.5th percentile.

The window and ReferencedImageSequence are left out of an enhanced SOP class (a legacy multi-frame source kept as
one object), where they would belong in functional groups; its ReferencedSeriesSequence still names the denoised
series. dciodvfy reports no error beyond the source's (tests/test_dicom_tree.py); for MR it warns that a rescale
other than identity is unusual in the MR Image IOD.

Without a denoised series (the denoised image went to an image file) the map is derived from the volume's own
source slices, as :func:`~dd_medical.io.write_series` derives the denoised series (or a new anonymous study).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.valuerep import DSfloat

from dd_medical.errors import InputError
from dd_medical.io.dicom import read_dicom_folder
from dd_medical.io.dicom_write import ENHANCED_SOP_CLASSES, write_series
from dd_medical.volume import Volume

#: Stored-value step of a CT map: 0.1 HU per stored value, so 0 to 6553.5 HU in unsigned 16 bits.
CT_STEP = 0.1
_UINT16_MAX = 65535
_STANDARD_DEVIATION = codes.DCM.StandardDeviation  # (113061, DCM, "Standard Deviation")
#: What the map's dd-medical entry in ContributingEquipmentSequence says it did.
CONTRIBUTION = "Deep Decoder ensemble uncertainty map"


def _nice_step(at_least: float) -> float:
    """The smallest 1, 2 or 5 x 10^k that is >= ``at_least`` (> 0)."""
    decade = 10.0 ** math.floor(math.log10(at_least))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        if mantissa * decade >= at_least * (1 - 1e-12):
            return float(f"{mantissa * decade:.12g}")
    return 10.0 * decade  # not reached


def sd_step(values: np.ndarray, modality: str) -> float:
    """Units per stored value of a map whose largest value is ``values.max()``: CT :data:`CT_STEP` HU while the map
    fits 16 bits (up to 6553.5 HU), else the smallest 1/2/5 x 10^k step that fits it; other modalities (stored
    values of any scale) the smallest such step that fits, so the map keeps its resolution whatever its scale."""
    top = float(np.max(values)) if np.size(values) else 0.0
    needed = top / _UINT16_MAX
    if modality == "CT" and needed <= CT_STEP:
        return CT_STEP
    return _nice_step(needed) if needed > 0 else CT_STEP


def encode_sd(values: np.ndarray, modality: str) -> tuple[np.ndarray, str, str]:
    """Stored uint16 values of a standard-deviation map (any shape, >= 0; a negative rounding residue becomes 0)
    with RescaleSlope :func:`sd_step` and RescaleIntercept 0: ``values = stored * slope`` to within ``slope / 2``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size and float(values.min()) < -1e-3:
        raise InputError(f"an uncertainty map holds a negative value ({float(values.min()):.3g}); a standard "
                         "deviation is >= 0")
    step = sd_step(values, modality)
    stored = np.clip(np.rint(np.maximum(values, 0.0) / step), 0, _UINT16_MAX).astype(np.uint16)
    return stored, f"{step:.12g}", "0"


def _standard_deviation_code() -> Dataset:
    item = Dataset()
    item.CodeValue = _STANDARD_DEVIATION.value
    item.CodingSchemeDesignator = _STANDARD_DEVIATION.scheme_designator
    item.CodeMeaning = _STANDARD_DEVIATION.meaning
    return item


def _display_window(values: np.ndarray, step: float) -> tuple[DSfloat, DSfloat]:
    """(WindowCenter, WindowWidth) showing 0 (black) to the map's 99.5th percentile (white)."""
    top = max(float(np.percentile(values, 99.5)) if np.size(values) else 0.0, 2 * step)
    width = float(f"{top:.4g}")
    return DSfloat(f"{width / 2:.6g}"), DSfloat(f"{width:.6g}")


class _Amend:
    """The last changes to each map image (``write_series``'s ``amend``): derivation code, equipment, window and,
    when derived from the denoised series, its references."""

    def __init__(self, window: tuple[DSfloat, DSfloat], denoised: Volume | None) -> None:
        self.window = window
        self.denoised = denoised
        self.headers: dict[Path, Dataset] = {}

    def _header(self, path: Path) -> Dataset:
        if path not in self.headers:
            self.headers[path] = pydicom.dcmread(path, stop_before_pixels=True)
        return self.headers[path]

    def __call__(self, ds: Dataset, slices: list[int]) -> None:
        ds.DerivationCodeSequence = DicomSequence([_standard_deviation_code(),
                                                   *(ds.get("DerivationCodeSequence") or [])])
        equipment = ds.get("ContributingEquipmentSequence") or []
        if equipment:
            equipment[-1].ContributionDescription = CONTRIBUTION
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTSequence",
                        "VOILUTFunction"):
            if keyword in ds:
                delattr(ds, keyword)
        enhanced = ds.SOPClassUID in ENHANCED_SOP_CLASSES  # window and image references live in functional groups
        if not enhanced:
            ds.WindowCenter, ds.WindowWidth = self.window
        if self.denoised is None:
            return
        header = self._header(Path(self.denoised.source_files[slices[0]]))
        made = ds.SourceImageSequence[0]  # write_series' reference: the denoised image this one was derived from
        image = Dataset()
        image.ReferencedSOPClassUID = made.ReferencedSOPClassUID
        image.ReferencedSOPInstanceUID = made.ReferencedSOPInstanceUID
        if not enhanced:
            ds.ReferencedImageSequence = DicomSequence([*(ds.get("ReferencedImageSequence") or []), image])
        if header.get("SourceImageSequence"):
            ds.SourceImageSequence = copy.deepcopy(header.SourceImageSequence)
        series = Dataset()
        series.SeriesInstanceUID = header.SeriesInstanceUID
        series.ReferencedInstanceSequence = DicomSequence([copy.deepcopy(image)])
        ds.ReferencedSeriesSequence = DicomSequence([series])


def write_uncertainty_series(
    sd: Volume,
    out_dir: str | Path,
    *,
    series_description: str,
    derivation_description: str,
    denoised: str | Path | None = None,
    org_root: str | None = None,
    overwrite: bool = False,
    transfer_syntax: str | None = None,
    units: str | None = None,
) -> list[Path]:
    """Write the map ``sd`` ((D, H, W) standard deviations >= 0, in the image's units: HU for CT) as a derived
    DICOM series in ``out_dir`` (the module docstring lists its attributes). ``denoised``: the folder of the
    denoised (or reconstructed) DICOM series ``sd`` belongs to, written from a volume of ``sd``'s geometry: each map
    image is derived from the denoised image at its place and references it; ``None``: derived from
    ``sd.source_files`` like :func:`~dd_medical.io.write_series`. How a stored value gives the SD is appended to
    ``derivation_description``. ``org_root``, ``overwrite`` and ``transfer_syntax`` as for
    :func:`~dd_medical.io.write_series` (``"auto"``: the denoised series' lossless syntax). ``units``: of the map,
    ``"HU"`` (stored in steps of :data:`CT_STEP`) or ``"stored values"`` (default: HU when ``sd.modality`` is CT).
    Atomic; returns the files written."""
    values = np.asarray(sd.array)
    if not np.all(np.isfinite(values)):
        raise InputError("the uncertainty map holds NaN or infinite values; cannot write DICOM")
    base = None
    if denoised is not None:
        base = read_dicom_folder(denoised)
        if base.shape != sd.shape or not (np.allclose(base.spacing, sd.spacing, atol=1e-3)
                                          and np.allclose(base.origin, sd.origin, atol=1e-2)
                                          and np.allclose(base.direction, sd.direction, atol=1e-4)):
            raise InputError(f"the denoised series ({'x'.join(map(str, base.shape))}) does not have the uncertainty "
                             f"map's geometry ({'x'.join(map(str, sd.shape))})", denoised)
    units = units or ("HU" if sd.modality == "CT" else "stored values")
    modality = "CT" if units == "HU" else sd.modality
    step = sd_step(values, modality)
    description = f"{derivation_description}; stored: SD in {units} = {step:.12g} x stored value (unsigned)"
    volume = sd if base is None else base.with_array(values)
    return write_series(volume, out_dir, series_description=series_description, derivation_description=description,
                        org_root=org_root, overwrite=overwrite, transfer_syntax=transfer_syntax,
                        encode=lambda array, _: encode_sd(array, modality),
                        amend=_Amend(_display_window(values, step), base))
