"""Transfer syntax of a derived DICOM series: the names offered, whether their encoder is installed, and the default
that keeps a lossless source's compression.

A derived image is new pixel data, so it is always encoded losslessly: Explicit VR Little Endian (uncompressed),
RLE Lossless (pydicom's own encoder), JPEG 2000 Lossless (``pylibjpeg-openjpeg``) or JPEG-LS Lossless
(``pyjpegls``: the ``jpegls`` extra, ``pip install 'dd-medical[jpegls]'``). The default, ``"auto"``, keeps the
source's syntax when it is one of these and its encoder is installed; a lossy source (baseline JPEG, JPEG 2000 that
may be irreversible, JPEG-LS near-lossless) is never re-encoded lossily and gives Explicit VR Little Endian.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import pydicom
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from ..errors import InputError
from ._compat import PYDICOM_MAJOR, encoder_available

logger = logging.getLogger(__name__)

#: The default: the source's syntax when it is lossless and can be encoded here, else Explicit VR Little Endian.
AUTO = "auto"
#: Names offered for ``--transfer-syntax`` (the UIDs are accepted too).
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000-lossless": JPEG2000Lossless,
    "jpegls-lossless": JPEGLSLossless,
}
#: What to install for an encoder pydicom has but cannot use here (JPEG-LS: the ``jpegls`` extra, i.e. pyjpegls).
_ENCODER_PACKAGES = {RLELossless: "pydicom>=3", JPEG2000Lossless: "pylibjpeg-openjpeg",
                     JPEGLSLossless: "'dd-medical[jpegls]' (pyjpegls)"}
# Source syntaxes that are lossless but that no installed pydicom encoder writes (JPEG lossless, HTJ2K lossless,
# deflate): a derived series of such a source is uncompressed.
_OTHER_LOSSLESS = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.201",
                   "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.1.99"}
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", ""}
_said: set[str] = set()  # source syntaxes whose fallback was logged already (once per process)


def transfer_syntax_names() -> str:
    """``"auto, explicit, rle, jpeg2000-lossless, jpegls-lossless"`` for messages and help texts."""
    return ", ".join([AUTO, *TRANSFER_SYNTAXES])


def resolve_transfer_syntax(name: str | None) -> UID | None:
    """The UID a derived series is written in for ``name`` (a name of :data:`TRANSFER_SYNTAXES` or its UID), or
    ``None`` for ``"auto"`` / ``None`` (decided per series by :func:`derived_transfer_syntax`).

    Raises :class:`InputError` (one line) for an unknown or lossy syntax, and for one whose encoder is not
    installed (naming the package to install), so a command can refuse it before any fitting.
    """
    if name is None or name.strip().lower() == AUTO:
        return None
    text = name.strip()
    uid = TRANSFER_SYNTAXES.get(text.lower())
    if uid is None:
        uid = next((u for u in TRANSFER_SYNTAXES.values() if u == text), None)
    if uid is None:
        what = f"transfer syntax {text!r}"
        if re.fullmatch(r"[0-9.]{1,64}", text) and UID(text).is_transfer_syntax:
            what += f" ({UID(text).name})"
        raise InputError(f"{what} is not offered for a derived series: choose {transfer_syntax_names()} or one of "
                         "their UIDs (a derived series is always written losslessly)")
    problem = encoder_problem(uid)
    if problem:
        raise InputError(f"transfer syntax {text} ({uid.name}): {problem}")
    return uid


def encoder_problem(uid: UID) -> str:
    """Why pixel data cannot be encoded in ``uid`` here (``"no encoder installed: pip install 'dd-medical[jpegls]'
    (pyjpegls)"``), or
    ``""`` when it can (always for Explicit VR Little Endian)."""
    if uid == ExplicitVRLittleEndian:
        return ""
    available = encoder_available(uid)
    if available is None:
        if PYDICOM_MAJOR < 3 and uid in TRANSFER_SYNTAXES.values():
            return f"pydicom {pydicom.__version__} has no encoder for it (pydicom>=3 has)"
        return "pydicom has no encoder for it"
    return "" if available else f"no encoder installed: pip install {_ENCODER_PACKAGES.get(uid, 'its pydicom plugin')}"


def derived_transfer_syntax(chosen: UID | None, source_syntaxes: Iterable[str]) -> UID:
    """The transfer syntax of a derived series: ``chosen`` when given, else (``auto``) the sources' common syntax
    when it is offered (:data:`TRANSFER_SYNTAXES`) and its encoder is installed, else Explicit VR Little Endian.
    A lossless source whose syntax cannot be kept is said once (per syntax and process) in the log, at WARNING."""
    if chosen is not None:
        return chosen
    syntaxes = {str(s) for s in source_syntaxes}
    if len(syntaxes) != 1:
        if len(syntaxes) > 1:
            logger.info("source slices in %d transfer syntaxes: derived series written as Explicit VR Little Endian",
                        len(syntaxes))
        return ExplicitVRLittleEndian
    source = UID(syntaxes.pop())
    if source in _UNCOMPRESSED:
        return ExplicitVRLittleEndian
    if source in TRANSFER_SYNTAXES.values():
        problem = encoder_problem(source)
        if not problem:
            return source
        _say_once(source, f"source transfer syntax {source.name} is lossless but cannot be kept ({problem}): "
                          "derived series written as Explicit VR Little Endian (uncompressed)")
    elif source in _OTHER_LOSSLESS:
        _say_once(source, f"source transfer syntax {source.name} is lossless but dd-medical cannot write it: "
                          "derived series written as Explicit VR Little Endian (uncompressed); transfer syntax "
                          "rle or jpeg2000-lossless compresses it losslessly")
    else:
        _say_once(source, f"source transfer syntax {source.name} may be lossy; a derived series is not re-encoded "
                          "lossily: written as Explicit VR Little Endian (transfer syntax rle or jpeg2000-lossless "
                          "compresses it losslessly)", level=logging.INFO)
    return ExplicitVRLittleEndian


def _say_once(source: UID, message: str, level: int = logging.WARNING) -> None:
    if str(source) not in _said:
        _said.add(str(source))
        logger.log(level, message)
