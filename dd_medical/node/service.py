"""The node: receive series (:mod:`.receiver`), process each complete one as a batch task (:func:`run_batch` on a
work dir holding only that series, into the one batch output root and manifest), send the derived series
(:mod:`.sender`), and survive a kill at any moment.

Three kinds of threads share the work dir and ``node.sqlite``: pynetdicom's association threads (receiving), one
processing thread (one series at a time; receiving never waits for it) and one sending thread (retries with backoff;
processing never waits for it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from ..batch import MANIFEST_NAME, REPORT_NAME, SERIES_DIR, Manifest, run_batch
from ..batch.driver import report_entry
from ..core.config import FitConfig
from ..errors import DDMedicalError, InputError
from ..io import atomic_output_dir
from ..io.dicom import one_line
from ..report import write_report
from .logs import event
from .receiver import Limits, Receiver, server_tls_context
from .sender import Destination, SendOutcome, send_folder
from .state import STATE_NAME, NodeState
from .workdir import WorkDir, link_or_copy

#: Seconds without a new instance, after the associations that carried a series are released, before it is complete.
DEFAULT_SETTLE = 30.0
#: Seconds between two counts of the work dir's bytes (a walk of every file; in between, additions are added up).
USAGE_RECOUNT = 600.0


@dataclass
class NodeConfig:
    """Everything a node needs (the ``dd-medical node`` options).

    ``settle``: seconds; ``retry_delay``: seconds before the first resend to a destination that is down, doubled
    after each failure up to ``retry_max``. ``fit``: the denoising settings (``presets.resolve("denoise", ...)``).
    """

    work_dir: Path
    destination: Destination
    ae_title: str = "DDMED"
    host: str = "0.0.0.0"
    port: int = 11112
    allow: tuple[str, ...] = ()
    settle: float = DEFAULT_SETTLE
    fit: FitConfig = field(default_factory=FitConfig)
    device: str = "auto"
    batch_size: int | None = None
    org_root: str | None = None
    limits: Limits = field(default_factory=Limits)
    retry_delay: float = 10.0
    retry_max: float = 600.0
    tls: ssl.SSLContext | None = None
    destination_tls: ssl.SSLContext | None = None
    tick: float = 0.25


def tls_contexts(cert: Path | None, key: Path | None, ca: Path | None,
                 destination: bool = False) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """``(server, client)`` TLS contexts: the server's from ``cert`` and ``key`` (clients verified against ``ca``
    when given); the client's for the destination (``destination``: verified against ``ca``, else the system's
    CAs, presenting ``cert`` when given)."""
    if (cert is None) != (key is None):
        raise InputError("--tls-cert and --tls-key go together")
    if ca is not None and cert is None and not destination:
        raise InputError("--tls-ca checks TLS peers: give it with --tls-cert and --tls-key, or --destination-tls")
    server = server_tls_context(cert, key, ca) if cert is not None else None
    client = None
    if destination:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
        if cert is not None:
            client.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return server, client


class Node:
    """A DICOM node on a work dir. ``serve()`` runs until :meth:`stop`; ``run_once()`` processes and sends what is
    pending, then returns. ``clock`` (seconds, wall time) is injected for tests."""

    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config, self.clock = config, clock
        self.work = WorkDir(config.work_dir)
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        self.state: NodeState | None = None
        self.receiver: Receiver | None = None
        self.server = None
        self.port: int | None = None
        # A series is quiet at most since the node began listening: its scanner may be resending what the node
        # missed while it was down.
        self._listening_since = 0.0
        self._usage_counted = clock()

    # -- life cycle ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _opened(self) -> Iterator[None]:
        with self.work.lock():
            self.state = NodeState(self.work.root / STATE_NAME)
            try:
                self._recover()
                self.receiver = Receiver(self.work, self.state, self.config.limits, clock=self.clock)
                yield
            finally:
                self.state.close()

    def serve(self, ready: Callable[[Node], None] | None = None, stop_timeout: float = 5.0) -> bool:
        """Receive, process and send until :meth:`stop` is called (from a signal handler or another thread).

        Returns True when its threads stopped within ``stop_timeout`` seconds; False when a series was still being
        processed (its thread is a daemon: the process may exit, the series is processed again at the next start).
        """
        cfg = self.config
        with self._opened():
            ae = self.receiver.application_entity(cfg.ae_title, cfg.allow)
            self._listening_since = self.clock()
            self.server = ae.start_server((cfg.host, cfg.port), block=False, ssl_context=cfg.tls,
                                          evt_handlers=self.receiver.handlers())
            self.port = self.server.server_address[1]
            event("node", status="listening", ae_title=cfg.ae_title, port=self.port, destination=str(cfg.destination),
                  tls=cfg.tls is not None, allow=",".join(cfg.allow) or "any", settle=cfg.settle)
            workers = [threading.Thread(target=self._loop, args=(self._process_round, threading.Event()),
                                        name="dd-node-process", daemon=True),
                       threading.Thread(target=self._loop, args=(self._send_round, self._wake_sender),
                                        name="dd-node-send", daemon=True)]
            for worker in workers:
                worker.start()
            if ready is not None:
                ready(self)
            try:
                self._stop.wait()
            finally:
                self.server.shutdown()
                event("node", status="stopping")
                for worker in workers:
                    worker.join(timeout=stop_timeout)
            busy = [s["uid"] for s in self.state.with_status("processing")]
            if busy:
                event("node", status="stopped", processing=",".join(busy),
                      reason="left in processing: processed again at the next start")
            return not any(worker.is_alive() for worker in workers)

    def stop(self) -> None:
        self._stop.set()
        self._wake_sender.set()

    def run_once(self) -> bool:
        """Complete every series quiet for ``settle`` seconds, process every complete series, try each pending send
        once; True when nothing is left to send and no series failed in this run."""
        with self._opened():
            failed_before = {s["uid"] for s in self.state.with_status("failed")}
            self._settle()
            while self._process_next():
                pass
            self._send_round(force=True)
            pending = self.state.sends("pending", "started")
            failed = [s for s in self.state.with_status("failed") if s["uid"] not in failed_before]
            return not pending and not failed

    def _loop(self, work: Callable[[], bool], wake: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                busy = work()
            except DDMedicalError as err:
                event("node", level=logging.ERROR, status="error", reason=one_line(err))
                busy = False
            except Exception as err:  # a bug or an environment failure: logged, the node goes on
                event("node", level=logging.ERROR, status="error", reason=f"{type(err).__name__}: {one_line(err)}")
                busy = False
            if not busy:
                wake.wait(self.config.tick)
                wake.clear()

    # -- recovery -------------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Bring the work dir and ``node.sqlite`` back in step after a kill: unacknowledged partial writes and the
        batch input removed, instance files written just before a kill registered, interrupted processing queued
        again, outbox folders of finished sends removed."""
        state, work = self.state, self.work
        work.clear(work.incoming)
        work.clear(work.input)
        known = {row["file"]: row for row in state.all_instances()}
        on_disk = {f"{work.instances.name}/{p.parent.name}/{p.name}": p for p in work.instances.glob("S*/I*.dcm")}
        gone = [row["sop_uid"] for name, row in known.items() if name not in on_disk]
        if gone:
            state.forget_instances(gone)
        for name, path in on_disk.items():
            if name not in known:
                self._register(name, path)
        for series in state.with_status("processing"):
            state.set_status(series["uid"], "received", expect="processing")
        active = {row["id"] for row in state.sends("pending", "started")}
        for folder in work.outbox.iterdir():
            if folder.name not in active:
                shutil.rmtree(folder, ignore_errors=True)
        for send_id in active - {p.name for p in work.outbox.iterdir()}:  # removed by hand: process again
            uid = state.drop_send(send_id)
            state.set_status(uid, "received", expect="sending")
            event("send", level=logging.WARNING, status="lost", series=uid, send=send_id,
                  reason="outbox folder missing: the series is processed again")

    def _register(self, name: str, path: Path) -> None:
        """An instance file renamed into place just before a kill (never acknowledged): keep it as received."""
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            data = path.read_bytes()
        except Exception as err:  # unreadable: it was checked before the rename, so this is damage on disk
            event("instance", level=logging.WARNING, status="dropped", file=name, reason=one_line(err))
            path.unlink(missing_ok=True)
            return
        series_uid, sop_uid = str(header.SeriesInstanceUID), str(header.SOPInstanceUID)
        self.state.add_instance(sop_uid=sop_uid, series_uid=series_uid, folder=path.parent.name, file=name,
                                size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                modality=str(header.get("Modality", "") or ""), calling_ae="",
                                now=path.stat().st_mtime)
        event("instance", status="recovered", series=series_uid, instance=sop_uid)

    # -- processing -----------------------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Every ``receiving`` series that no open association carries and that got no new instance for ``settle``
        seconds (while the node listened) becomes ``received`` (complete)."""
        now = self.clock()
        carried = self.receiver.open_series() if self.receiver else set()
        for series in self.state.with_status("receiving"):
            quiet = now - max(series["last_received"], self._listening_since)
            if series["uid"] in carried or quiet < self.config.settle:
                continue
            generation = self.state.mark_received(series["uid"], now)
            if generation is not None:
                event("series", status="received", series=series["uid"], instances=series["instances"],
                      calling_ae=series["calling_ae"], generation=generation)

    def _process_round(self) -> bool:
        self._settle()
        return self._process_next()

    def _process_next(self) -> bool:
        """Process the complete series that waited longest; False when there is none."""
        queued = self.state.with_status("received")
        if not queued:
            return False
        series = queued[0]
        if not self.state.set_status(series["uid"], "processing", expect="received"):
            return True
        self._process(self.state.series(series["uid"]))
        self._wake_sender.set()  # the sender has work now
        return True

    def _process(self, series: dict) -> None:
        uid, generation = series["uid"], series["generation"]
        event("series", status="processing", series=uid, instances=series["instances"], generation=generation)
        started = time.perf_counter()
        try:
            done, failed = self._run_batch(series)
        except DDMedicalError as err:
            done, failed = [], [(uid, one_line(err))]
        except Exception as err:  # e.g. the disk filled up: the series fails with the reason, the node goes on
            done, failed = [], [(uid, f"{type(err).__name__}: {one_line(err)}")]
        seconds = time.perf_counter() - started
        notes = [f"{key}: {reason}" for key, reason in failed] + [f"{key}: {note}" for key, _, _, note in done if note]
        reason = "; ".join(notes)
        if not done:
            reason = reason or "no image volume in the series"
            if self.state.set_status(uid, "failed", reason, expect="processing"):
                event("series", level=logging.WARNING, status="failed", series=uid, reason=reason)
            self._after_processing()
            return
        sends = [(f"{folder}.g{generation}", key, files) for key, folder, files, _ in done]
        for (send_id, _, _), (_, folder, _, _) in zip(sends, done, strict=True):
            self._fill_outbox(send_id, folder)
            self.receiver.add_usage(sum(p.stat().st_size for p in (self.work.outbox / send_id).iterdir()))
        if self.state.start_sending(uid, generation, sends, reason, self.clock()):
            event("series", status="sending", series=uid, derived=len(sends), seconds=round(seconds, 2),
                  **({"reason": reason} if reason else {}))
        else:
            for send_id, _, _ in sends:
                shutil.rmtree(self.work.outbox / send_id, ignore_errors=True)
            event("series", status="superseded", series=uid, reason="a new instance arrived while processing")
        self._after_processing()

    def _run_batch(self, series: dict) -> tuple[list[tuple[str, str, int, str]], list[tuple[str, str]]]:
        """Run the batch task on the series alone (hard links in ``input/``); ``(done, failed)``: done as
        ``(key, output folder, files, note)`` (note: the fidelity check's flag), failed as ``(key, reason)``."""
        cfg, work = self.config, self.work
        snapshot = work.input / series["folder"]
        work.clear(work.input)
        try:
            with atomic_output_dir(snapshot) as tmp:
                for name in self.state.instance_files(series["uid"]):
                    link_or_copy(work.root / name, tmp / Path(name).name)
            summary = run_batch(work.input, work.batch, config=cfg.fit, device=cfg.device, batch_size=cfg.batch_size,
                                org_root=cfg.org_root, retry_failed=True, progress=False)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
        flagged = dict(summary.flagged)
        manifest = Manifest(work.batch / MANIFEST_NAME)
        try:
            rows = {row["key"]: row for row in manifest.rows()}
        finally:
            manifest.close()
        done = [(key, rows[key]["folder"], int(rows[key]["outputs"]), flagged.get(key, ""))
                for key in [*summary.done, *summary.skipped]]
        failed = list(summary.failed) + [(name, reason) for name, reason in summary.bad_files]
        return done, failed

    def _fill_outbox(self, send_id: str, folder: str) -> None:
        """``outbox/<send_id>/``: hard links to the derived series (kept until acknowledged, whatever happens to
        the batch output meanwhile); already there after a restart."""
        target = self.work.outbox / send_id
        if target.is_dir():
            return
        with atomic_output_dir(target) as tmp:
            for path in sorted((self.work.batch / SERIES_DIR / folder).iterdir()):
                link_or_copy(path, tmp / path.name)

    def _after_processing(self) -> None:
        if self.clock() - self._usage_counted > USAGE_RECOUNT:
            self.receiver.refresh_usage()
            self._usage_counted = self.clock()
        try:
            self.write_report()
        except OSError as err:
            event("report", level=logging.WARNING, status="not written", reason=one_line(err))

    # -- sending --------------------------------------------------------------------------------------------------

    def _send_round(self, force: bool = False) -> bool:
        """Try every pending send that is due (``force``: all of them, once)."""
        for row in self.state.sends("superseded"):
            shutil.rmtree(self.work.outbox / row["id"], ignore_errors=True)
        now = self.clock()
        for row in self.state.sends("pending", "started"):
            if self._stop.is_set():
                break
            if force or row["next_try"] <= now:
                self._send(row)
        return False  # the next round waits a tick: a send that failed is due again only after its backoff

    def _send(self, row: dict) -> None:
        cfg, send_id = self.config, row["id"]
        folder = self.work.outbox / send_id
        if not folder.is_dir():
            return
        try:
            outcome = send_folder(cfg.destination, cfg.ae_title, folder, skip=self.state.sent_files(send_id),
                                  on_sent=lambda name: self.state.mark_file_sent(send_id, name),
                                  claim=lambda: self.state.claim_send(send_id), tls=cfg.destination_tls)
        except Exception as err:  # e.g. an outbox file that cannot be read: retried with backoff like the network
            outcome = SendOutcome(f"{type(err).__name__}: {one_line(err)}", 0)
        now = self.clock()
        if outcome.superseded:
            shutil.rmtree(folder, ignore_errors=True)
            return
        if outcome.error:
            attempts = (row["attempts"] or 0) + 1
            delay = min(cfg.retry_delay * 2 ** (attempts - 1), cfg.retry_max)
            self.state.send_failed(send_id, outcome.error, now + delay)
            event("send", level=logging.WARNING, status="failed", series=row["series_uid"], send=send_id,
                  sent=outcome.sent, attempt=attempts, retry_in=round(delay, 1), reason=outcome.error)
            return
        finished = self.state.send_done(send_id, now)
        shutil.rmtree(folder, ignore_errors=True)
        event("send", status="acknowledged", series=row["series_uid"], send=send_id, files=row["files"],
              destination=str(cfg.destination))
        if finished:
            event("series", status="sent", series=row["series_uid"], destination=str(cfg.destination))

    # -- report and status ----------------------------------------------------------------------------------------

    def write_report(self) -> Path:
        """``batch/report.html``: the batch report over every series the node processed (the manifest's rows), and
        the instances it refused with their reasons."""
        manifest = Manifest(self.work.batch / MANIFEST_NAME)
        try:
            rows = manifest.rows()
        finally:
            manifest.close()
        entries = [report_entry(self.work.batch, row, key=row["key"], folder=row["folder"],
                                modality=row["modality"],
                                excluded=[tuple(e) for e in json.loads(row["excluded"] or "[]")])
                   for row in rows]
        refused = [(f"instance {r['sop_uid'] or '?'} of series {r['series_uid'] or '?'} from {r['calling_ae']}",
                    r["reason"]) for r in self.state.rejected()]
        return write_report(self.work.batch / REPORT_NAME, entries, refused, title="dd-medical node report")


def status_lines(work_dir: str | Path) -> list[str]:
    """One line per series of a work dir's ``node.sqlite``: UID, status, instances, last change (UTC), reason."""
    path = Path(work_dir) / STATE_NAME
    if not path.is_file():
        raise InputError("no node state here (not a dd-medical node work dir)", work_dir)
    state = NodeState(path)
    try:
        lines = []
        for series in state.all_series():
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(series["updated"]))
            line = f"{series['uid']} {series['status']} instances={series['instances']} updated={stamp}"
            if series["status"] == "sending":
                errors = [s["last_error"] for s in state.sends("pending", "started")
                          if s["series_uid"] == series["uid"] and s["last_error"]]
                line += f" retrying: {errors[0]}" if errors else ""
            if series["reason"]:
                line += f" reason: {series['reason']}"
            lines.append(line)
        return lines
    finally:
        state.close()
