"""Sending: a derived series to the destination by C-STORE (``pynetdicom``), one association per series.

Each file the destination acknowledges (success or warning status) is reported to the caller before the next is
sent, so a send interrupted by a failure or a kill resumes with the files not yet acknowledged. A file whose
compressed transfer syntax the destination does not accept is sent decompressed (Explicit VR Little Endian).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import InputError
from ..io.dicom import one_line

#: C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded, not matching).
STORED = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>\d{1,5})$")
_AE_TITLE = re.compile(r"^[ -~]{1,16}$")


def check_ae_title(title: str, what: str) -> str:
    """``title`` stripped, when it is a valid AE title (1-16 printable ASCII characters, no backslash); else
    :class:`InputError` naming ``what``."""
    stripped = title.strip()
    if not _AE_TITLE.match(stripped) or "\\" in stripped:
        raise InputError(f"{what} {title!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return stripped


@dataclass(frozen=True)
class Destination:
    """Where derived series go: ``AE_TITLE@HOST:PORT`` (an IPv6 host in brackets)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = _DESTINATION.match(text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise InputError(f"destination {text!r} is not AE_TITLE@HOST:PORT (e.g. PACS@10.0.0.5:104)")
        return cls(check_ae_title(match["ae"], "destination"), match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class SendOutcome:
    """``error`` is "" when every file was acknowledged; ``sent``: files acknowledged in this attempt."""

    error: str
    sent: int
    superseded: bool = False


def send_folder(destination: Destination, calling_ae: str, folder: Path, *, skip: set[str],
                on_sent: Callable[[str], None], claim: Callable[[], bool] = lambda: True,
                tls: ssl.SSLContext | None = None, timeout: float = 30.0) -> SendOutcome:
    """Send the files of ``folder`` (sorted by name) not in ``skip`` to ``destination`` over one association.

    ``claim()`` is called once the association is established, before the first C-STORE; when it returns False
    nothing is sent (the series was superseded). ``on_sent(name)`` is called after each acknowledged file. Never
    raises for network problems: they are the outcome's ``error`` (one line, no patient data).
    """
    from pynetdicom import AE

    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip]
    if not files:
        return SendOutcome("", 0) if claim() else SendOutcome("", 0, superseded=True)
    metas = {}
    for path in files:
        meta = read_file_meta_info(path)
        metas[path] = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({c for c, _ in metas.values()}):
        syntaxes = sorted({s for c, s in metas.values() if c == sop_class})
        ae.add_requested_context(sop_class, list(dict.fromkeys([*syntaxes, ExplicitVRLittleEndian,
                                                                ImplicitVRLittleEndian])))
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout):
            pass  # reachable: an association that fails now is the destination's answer, not the network's
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                             tls_args=(tls, destination.host) if tls is not None else None)
    except (OSError, ValueError, RuntimeError) as err:
        return SendOutcome(f"cannot reach {destination}: {err.strerror or one_line(err)}"
                           if isinstance(err, OSError) else f"cannot reach {destination}: {one_line(err)}", 0)
    if not assoc.is_established:
        what = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "could not be opened"
        return SendOutcome(f"association with {destination} {what}", 0)
    sent = 0
    try:
        if not claim():
            return SendOutcome("", 0, superseded=True)
        for path in files:
            error = _store(assoc, path, *metas[path])
            if error:
                return SendOutcome(f"{path.name} to {destination}: {error}", sent)
            on_sent(path.name)
            sent += 1
        return SendOutcome("", sent)
    finally:
        if assoc.is_established:
            assoc.release()


def _store(assoc, path: Path, sop_class: str, syntax: str) -> str:
    """C-STORE one file; "" when the destination stored it, else why not."""
    accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if str(cx.abstract_syntax) == sop_class}
    if not accepted:
        return f"the destination accepts no context for SOP class {sop_class}"
    dataset: Path | pydicom.Dataset = path
    if syntax not in accepted:
        if not UID(syntax).is_compressed:
            return f"the destination does not accept transfer syntax {syntax}"
        dataset = pydicom.dcmread(path)
        dataset.decompress()
    try:
        status = assoc.send_c_store(dataset)
    except (OSError, ValueError, RuntimeError, AttributeError) as err:
        return f"C-STORE failed: {one_line(err)}"
    if not status or "Status" not in status:
        return "no response (association aborted or timed out)"
    code = int(status.Status)
    if code in STORED:
        return ""
    comment = str(status.get("ErrorComment", "") or "")
    return f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")
