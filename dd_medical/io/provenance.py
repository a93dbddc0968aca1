"""What was done to an image, in words: DICOM DerivationDescription and the MONAI transforms' metadata record."""

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
    )
