"""Receiving: a C-STORE SCP (``pynetdicom``) for CT and MR image storage that also answers C-ECHO.

Every instance is checked (a readable DICOM image of one of the accepted classes, its pixels decodable) and written
atomically into the work dir (temporary file, fsync, rename, fsync of the folder) and recorded in ``node.sqlite``
before the C-STORE is acknowledged; an instance that is refused gets a failure status whose comment says why. A copy
of an instance already received (same SOPInstanceUID, same bytes) is acknowledged and changes nothing. The SCP also
remembers which series each open association carries: a series is complete only once those are released
(:attr:`Receiver.open_series`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import InputError
from ..io import load_series, scan_dicom
from ..io._compat import decoder_available
from ..io.dicom import one_line
from .logs import event
from .state import NodeState
from .workdir import WorkDir, fsync_dir

#: The storage SOP classes accepted: CT and MR images, enhanced and legacy-converted multi-frame included.
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
VERIFICATION = "1.2.840.10008.1.1"
_UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_COMPRESSED = (
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5",
)
#: C-STORE failure statuses (PS3.4 B.2.3): out of resources, data set does not match the SOP class, cannot
#: understand.
OUT_OF_RESOURCES, NOT_THIS_CLASS, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
_COMMENT_LENGTH = 64  # ErrorComment is LO
_MB = 1024 * 1024


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes offered: uncompressed and deflated, and every compressed syntax whose decoder is
    installed here (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE), so what is acknowledged can also be read."""
    offered = [str(s) for s in _UNCOMPRESSED]
    return offered + [syntax for syntax in _COMPRESSED if decoder_available(UID(syntax))]


@dataclass(frozen=True)
class Limits:
    """What the node refuses to store: an instance larger than ``max_instance_bytes``; any instance once the work
    dir holds ``max_disk_bytes`` (None: no limit) or the file system would keep less than ``min_free_bytes``."""

    max_instance_bytes: int = 2048 * _MB
    max_disk_bytes: int | None = 100 * 1024 * _MB
    min_free_bytes: int = 1024 * _MB


class Refused(Exception):
    """An instance the node does not store: ``status`` (a C-STORE failure code), a one-line reason and, when it
    could be read, the instance's SeriesInstanceUID."""

    def __init__(self, status: int, reason: str, series_uid: str = "") -> None:
        super().__init__(reason)
        self.status, self.reason, self.series_uid = status, reason, series_uid


@dataclass(frozen=True)
class Received:
    """What an accepted instance was: its UIDs, and whether it was already there (a duplicate)."""

    series_uid: str
    sop_uid: str
    duplicate: bool


class Receiver:
    """Stores instances into a work dir and tracks which series open associations carry.

    ``usage`` (bytes in the work dir) starts from a walk of the work dir and grows with every stored instance and
    every derived series (:meth:`add_usage`); the node counts it again now and then (:meth:`refresh_usage`).
    """

    def __init__(self, work: WorkDir, state: NodeState, limits: Limits, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.work, self.state, self.limits, self.clock = work, state, limits, clock
        self._lock = threading.Lock()
        self._carriers: dict[int, tuple[object, set[str]]] = {}  # id(association) -> (association, series)
        self.usage = work.usage()

    # -- what open associations carry -----------------------------------------------------------------------------

    def open_series(self) -> set[str]:
        """Series that an association still open has delivered an instance of (an association whose thread has
        ended counts as closed, whatever events were missed)."""
        with self._lock:
            for key, (association, _) in list(self._carriers.items()):
                if not association.is_alive():
                    del self._carriers[key]
            return set().union(*(series for _, series in self._carriers.values()))

    def association_closed(self, key: int) -> set[str]:
        with self._lock:
            return self._carriers.pop(key, (None, set()))[1]

    def refresh_usage(self) -> None:
        """Count the work dir's bytes again (a walk of every file)."""
        usage = self.work.usage()
        with self._lock:
            self.usage = usage

    def add_usage(self, size: int) -> None:
        """``size`` bytes more were written into the work dir (derived series, montages)."""
        with self._lock:
            self.usage += size

    # -- storing --------------------------------------------------------------------------------------------------

    def store(self, encoded: bytes, *, calling_ae: str, association=None) -> Received:
        """Check and store one instance (``encoded``: the DICOM file, preamble and file meta included); raises
        :class:`Refused` with the reason when it is not stored. ``association`` (a ``pynetdicom`` association, a
        thread) carries the instance's series until it ends."""
        self._check_room(len(encoded))
        staging = self.work.incoming / uuid.uuid4().hex
        staging.mkdir()
        try:
            path = staging / "instance.dcm"
            with open(path, "wb") as handle:
                handle.write(encoded)
                handle.flush()
                os.fsync(handle.fileno())
            series_uid, sop_uid, modality = _check_instance(staging, path)
            digest = hashlib.sha256(encoded).hexdigest()
            return self._keep(path, series_uid, sop_uid, modality, digest, len(encoded), calling_ae, association)
        finally:
            for leftover in staging.iterdir():
                leftover.unlink(missing_ok=True)
            staging.rmdir()

    def _check_room(self, size: int) -> None:
        limits = self.limits
        if size > limits.max_instance_bytes:
            raise Refused(OUT_OF_RESOURCES, f"instance of {size / _MB:.1f} MB is over the limit of "
                                            f"{limits.max_instance_bytes / _MB:.0f} MB (--max-instance-mb)")
        if limits.max_disk_bytes is not None and self.usage + size > limits.max_disk_bytes:
            raise Refused(OUT_OF_RESOURCES, f"work dir full: {self.usage / _MB / 1024:.2f} GB used of "
                                            f"{limits.max_disk_bytes / _MB / 1024:.2f} GB (--max-disk-gb)")
        free = _free_bytes(self.work.root)
        if free - size < limits.min_free_bytes:
            raise Refused(OUT_OF_RESOURCES, f"disk full: {free / _MB:.0f} MB free, "
                                            f"{limits.min_free_bytes / _MB:.0f} MB kept free")

    def _keep(self, path: Path, series_uid: str, sop_uid: str, modality: str, digest: str, size: int,
              calling_ae: str, association) -> Received:
        folder = self.work.series_folder(series_uid)
        relative = f"{self.work.instances.name}/{folder}/{self.work.instance_name(sop_uid)}"
        with self._lock:
            known = self.state.instance(sop_uid)
            if association is not None:  # a copy carries its series too
                self._carriers.setdefault(id(association), (association, set()))[1].add(series_uid)
            if known is not None and known["sha256"] == digest and (self.work.root / known["file"]).is_file():
                return Received(series_uid, sop_uid, duplicate=True)
            target = self.work.root / relative
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            fsync_dir(target.parent)
            self.state.add_instance(sop_uid=sop_uid, series_uid=series_uid, folder=folder, file=relative, size=size,
                                    sha256=digest, modality=modality, calling_ae=calling_ae, now=self.clock())
            self.usage += size
        if known is not None:
            event("instance", status="replaced", series=series_uid, instance=sop_uid, calling_ae=calling_ae)
        return Received(series_uid, sop_uid, duplicate=False)

    # -- pynetdicom handlers --------------------------------------------------------------------------------------

    def handle_store(self, evt) -> Dataset:
        """EVT_C_STORE: store the instance; success (0x0000) or a failure status with an ErrorComment."""
        calling = str(evt.assoc.requestor.ae_title).strip()
        request = evt.request
        sop_uid = str(getattr(request, "AffectedSOPInstanceUID", "") or "")
        try:
            if str(request.AffectedSOPClassUID) not in STORAGE_CLASSES:
                raise Refused(NOT_THIS_CLASS, f"SOP class {request.AffectedSOPClassUID} is not CT or MR image storage")
            received = self.store(evt.encoded_dataset(include_meta=True), calling_ae=calling,
                                  association=evt.assoc)
        except OSError as err:  # the work dir cannot be written (full, read-only): not stored, not acknowledged
            refused = Refused(OUT_OF_RESOURCES, f"cannot write to the work dir: {err.strerror or one_line(err)}")
            return self._refuse(refused, calling, sop_uid)
        except Refused as refused:
            return self._refuse(refused, calling, sop_uid)
        event("instance", status="duplicate" if received.duplicate else "stored", series=received.series_uid,
              instance=received.sop_uid, calling_ae=calling)
        status = Dataset()
        status.Status = 0x0000
        return status

    def _refuse(self, refused: Refused, calling: str, sop_uid: str) -> Dataset:
        """Record and log a refused instance; its failure status with the reason as ErrorComment."""
        event("instance", status="rejected", series=refused.series_uid, instance=sop_uid, calling_ae=calling,
              code=f"0x{refused.status:04X}", reason=refused.reason)
        with contextlib.suppress(Exception):  # a full disk may refuse the record too; the refusal still goes out
            self.state.add_rejected(calling_ae=calling, series_uid=refused.series_uid, sop_uid=sop_uid,
                                    reason=refused.reason, now=self.clock())
        status = Dataset()
        status.Status = refused.status
        status.ErrorComment = _comment(refused.reason)
        return status

    def handle_echo(self, evt) -> int:
        event("echo", calling_ae=str(evt.assoc.requestor.ae_title).strip())
        return 0x0000

    def handle_established(self, evt) -> None:
        event("association", status="established", calling_ae=str(evt.assoc.requestor.ae_title).strip(),
              address=evt.assoc.requestor.address)

    def handle_rejected(self, evt) -> None:
        event("association", status="rejected", calling_ae=str(evt.assoc.requestor.ae_title).strip(),
              address=evt.assoc.requestor.address, reason="calling AE title not allowed (--allow)")

    def handle_closed(self, evt) -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: the association no longer holds its series open."""
        carried = self.association_closed(id(evt.assoc))
        if carried:
            event("association", status="released" if evt.event.name == "EVT_RELEASED" else "closed",
                  calling_ae=str(evt.assoc.requestor.ae_title).strip(), series=len(carried))

    def application_entity(self, ae_title: str, allow: tuple[str, ...] = ()):
        """A ``pynetdicom.AE`` for ``ae_title`` accepting the storage classes and syntaxes, and C-ECHO; with
        ``allow``, only those calling AE titles (others are rejected at association)."""
        from pynetdicom import AE

        ae = AE(ae_title=ae_title)
        syntaxes = transfer_syntaxes()
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION, [str(s) for s in _UNCOMPRESSED[:2]])
        ae.require_called_aet = True
        ae.require_calling_aet = list(allow)
        return ae

    def handlers(self) -> list:
        from pynetdicom import evt

        return [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                (evt.EVT_ESTABLISHED, self.handle_established), (evt.EVT_REJECTED, self.handle_rejected),
                (evt.EVT_RELEASED, self.handle_closed), (evt.EVT_ABORTED, self.handle_closed),
                (evt.EVT_CONN_CLOSE, self.handle_closed)]


def server_tls_context(cert: str | Path, key: str | Path, ca: str | Path | None = None) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate and key; with ``ca``, clients must present a certificate that
    this CA signed (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise InputError(f"cannot load the TLS certificate, key or CA: {one_line(err)}") from err
    return context


def _comment(reason: str) -> str:
    """``reason`` as an ErrorComment (at most 64 characters: cut at a word, marked with "...")."""
    if len(reason) <= _COMMENT_LENGTH:
        return reason
    cut = reason[:_COMMENT_LENGTH - 3]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "..."


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _check_instance(staging: Path, path: Path) -> tuple[str, str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID, Modality)`` of a stored instance that the batch reader can use;
    :class:`Refused` naming the problem otherwise (a corrupt or truncated file, no UIDs, not a grey-level image,
    pixels that cannot be decoded)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises many types for corrupt bytes
        raise Refused(CANNOT_UNDERSTAND, f"cannot read the data set: {one_line(err)}") from err
    series_uid = str(header.get("SeriesInstanceUID", "") or "")
    sop_uid = str(header.get("SOPInstanceUID", "") or "")
    if not series_uid or not sop_uid:
        raise Refused(CANNOT_UNDERSTAND, "no SeriesInstanceUID or SOPInstanceUID")
    try:
        scan = scan_dicom(staging, strict=True)
        if not scan.series:
            reason = scan.skipped[0].reason if scan.skipped else "not an image"
            raise Refused(NOT_THIS_CLASS, reason, series_uid)
        if scan.series[0].samples_per_pixel != 1:
            raise Refused(NOT_THIS_CLASS, "colour image: only grey-level images are denoised", series_uid)
        load_series([path])
    except InputError as err:
        raise Refused(CANNOT_UNDERSTAND, err.problem, series_uid) from err
    except Refused:
        raise
    except Exception as err:  # a decoder failing in an unexpected way: still a refusal with a reason
        raise Refused(CANNOT_UNDERSTAND, f"cannot decode the pixels: {one_line(err)}", series_uid) from err
    return series_uid, sop_uid, str(header.get("Modality", "") or "")
