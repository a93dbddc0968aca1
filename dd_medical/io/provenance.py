"""What was done to an image, in words: DICOM DerivationDescription (with a check's verdict, within its 1024
characters) and the MONAI transforms' metadata record; for an uncertainty map, its SeriesDescription and a
DerivationDescription saying what its values are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..version import __version__

if TYPE_CHECKING:  # a type only: io stays free of the engine's imports
    from ..core.config import FitConfig

_METHODS = {"deep": "Untrained Deep Decoder", "conv": "Untrained ConvDecoder",
            "both": "Untrained Deep Decoder and ConvDecoder (averaged)"}
_REFERENCES = {"deep": " (Heckel & Hand 2019)", "conv": " (Darestani & Heckel 2021)", "both": ""}


def derivation_description(config: FitConfig, job: str = "denoising") -> str:
    """Method, package version and parameters, e.g. ``"Untrained Deep Decoder denoising (Heckel & Hand 2019),
    dd-medical 0.1.0: k=64, blocks=6, ..."``; ``job`` is ``"denoising"`` or ``"reconstruction (<kind>)"``."""
    return (
        f"{_METHODS[config.architecture]} {job}{_REFERENCES[config.architecture]}, dd-medical {__version__}: "
        f"k={config.channels}, blocks={config.blocks or 'from the noise level'}, iterations<={config.iterations}, "
        f"Adam lr={config.learning_rate}, stopping={config.stopping}, result={config.result}, seed={config.seed}"
        + (f", TV weight={config.tv_weight:g}" if config.tv_weight > 0 else "")
        + (f", residual structure returned where unfaithful (k={config.detail_threshold:g})"
           if job == "denoising" and config.detail_threshold > 0 else "")
    )


#: DerivationDescription's limit (ST, 1024 characters).
_DERIVATION_LENGTH = 1024


def with_check(description: str, check: str) -> str:
    """``"<description>; <check>"`` (a check's one-line summary after the provenance) within DerivationDescription's
    1024 characters: the description is shortened (ending ``"..."``) so that the check's verdict always survives."""
    room = _DERIVATION_LENGTH - len(check) - 2
    if room < 4:
        return check[:_DERIVATION_LENGTH]
    if len(description) > room:
        description = description[:room - 3].rstrip() + "..."
    return f"{description}; {check}"


#: SeriesDescription's limit (LO, 64 characters).
_DESCRIPTION_LENGTH = 64


def uncertainty_series_description(denoised: str, units: str, *, calibrated: bool = True) -> str:
    """SeriesDescription of an uncertainty map: ``"<denoised> uncertainty (SD, HU)"`` (``calibrated=False``:
    ``"<denoised> spread (SD, HU, not calibrated)"``), the ``denoised`` part shortened to fit 64 characters."""
    suffix = f" uncertainty (SD, {units})" if calibrated else f" spread (SD, {units}, not calibrated)"
    return denoised[:max(0, _DESCRIPTION_LENGTH - len(suffix))].rstrip() + suffix


def uncertainty_derivation(config: FitConfig, units: str, *, job: str = "denoising", calibrated: bool = True) -> str:
    """DerivationDescription of an uncertainty map: what the values are (in ``units``, e.g. ``"HU"``), from how
    many decoders per slice, then the provenance of the image it belongs to (:func:`derivation_description` of
    ``config`` and ``job``)."""
    decoders = config.ensemble * (2 if config.architecture == "both" else 1)
    what = ("calibrated standard deviation of each voxel's error (dd_medical.core.uncertainty)" if calibrated else
            "standard deviation of the decoders' images, not calibrated (where they disagree, not an error bar)")
    return (f"Uncertainty map: {what}, in {units}, from the spread of the {decoders} decoders fitted per slice. "
            f"Of: {derivation_description(config, job)}")
