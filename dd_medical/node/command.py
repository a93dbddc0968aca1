"""``dd-medical node``: the command line of the DICOM node (registered on :data:`dd_medical.cli.cli`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from .. import presets
from ..errors import DDMedicalError
from .logs import configure

NODE_INSTALL_HINT = "the DICOM node needs pynetdicom, which is not installed: pip install 'dd-medical[node]'"
_MB = 1024 * 1024


def _fail(message: str) -> None:
    click.echo(f"dd-medical: error: {message}", err=True)
    sys.exit(2)


@click.command()
@click.option("--ae-title", default="DDMED", show_default=True, help="This node's AE title (called AE title).")
@click.option("--port", type=click.IntRange(0, 65535), default=11112, show_default=True,
              help="TCP port to listen on (0: any free port, logged).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on (127.0.0.1: this machine).")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Where received instances, the batch manifest, derived series and the outbox are kept.")
@click.option("--destination", default=None, metavar="AE@HOST:PORT",
              help="Where derived series are sent by C-STORE, e.g. PACS@10.0.0.5:104 (required unless --status).")
@click.option("--allow", multiple=True, metavar="CALLING_AE",
              help="Accept associations only from this calling AE title (repeat for several) [default: any].")
@click.option("--settle", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds without a new instance, once the associations that carried a series are released, "
                   "before the series is complete.")
@click.option("--preset", "preset_name", type=click.Choice(presets.presets("denoise")), default=None,
              help=f"Denoising settings (dd_medical.presets) [default: {presets.DEFAULT_PRESET['denoise']}].")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Maximum Adam steps per slice [default: the preset's].")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present, else CPU), cpu, cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Slices fitted at once (memory only) [default: from free device memory].")
@click.option("--org-root", envvar="DD_MEDICAL_ORG_ROOT", default=None,
              help="UID root of the derived series (env DD_MEDICAL_ORG_ROOT) [default: 2.25. UUID-derived UIDs].")
@click.option("--max-instance-mb", type=click.FloatRange(min=0, min_open=True), default=2048, show_default=True,
              help="Refuse an instance larger than this (C-STORE status 0xA700, with the reason).")
@click.option("--max-disk-gb", type=click.FloatRange(min=0, min_open=True), default=100, show_default=True,
              help="Refuse instances once the work dir holds this much (0xA700, with the reason); a node also "
                   "refuses when the disk would keep less than 1 GiB free.")
@click.option("--retry-delay", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds before resending to a destination that is down; doubled after each failure, at most "
                   "600.")
@click.option("--tls-cert", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PEM certificate: accept DICOM over TLS only (with --tls-key).")
@click.option("--tls-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PEM private key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PEM CA bundle: callers must present a certificate it signed (mutual TLS); with "
                   "--destination-tls, also what the destination's certificate is checked against.")
@click.option("--destination-tls", is_flag=True,
              help="Send to the destination over TLS (its certificate checked against --tls-ca, else the system's "
                   "CAs; --tls-cert presented when given).")
@click.option("--once", is_flag=True,
              help="Do not listen: process what is complete, try each pending send once, and exit (0: nothing left "
                   "to send and nothing failed; 1 otherwise). For tests and cron.")
@click.option("--status", "show_status", is_flag=True,
              help="Print one line per series of the work dir (received, processing, sending, sent, failed + "
                   "reason) and exit.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="Logs on stderr: one JSON object per line, or plain text. UIDs and AE titles only.")
@click.option("--uncertainty", is_flag=True, hidden=True)
def node(**options) -> None:
    """Run a DICOM node: receive CT/MR series by C-STORE, denoise each complete series, send the derived series.

    Received instances are written into --work-dir before they are acknowledged; a series is complete once the
    associations that carried it are released and no instance arrived for --settle seconds. Each complete series is
    a batch task (same manifest, derived series and report as dd-medical batch, under WORK_DIR/batch), and its
    derived series goes to --destination, resent with backoff until acknowledged. Killed at any moment and started
    again, the node processes and sends every received series once. Stop it with SIGTERM or Ctrl-C.
    """
    try:
        if options["uncertainty"]:
            raise DDMedicalError("--uncertainty is not available in the node yet: it sends the denoised series only")
        if options["show_status"]:
            from .service import status_lines

            for line in status_lines(options["work_dir"]) or ["no series received yet"]:
                click.echo(line)
            return
        configure(options["log_format"])
        node_ = _build(options)
        if options["once"]:
            sys.exit(0 if node_.run_once() else 1)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: node_.stop())
        if not node_.serve():
            # A fit is still running on a daemon thread: leave without unwinding it (the work dir is consistent
            # at any moment, as after kill -9; the series is processed again at the next start).
            logging.shutdown()
            os._exit(0)
    except DDMedicalError as err:
        _fail(str(err))
    except OSError as err:  # e.g. the port is in use, the work dir cannot be written
        _fail(f"{err.filename}: {err.strerror}" if getattr(err, "filename", None) else str(err))


def _build(options: dict):
    """The :class:`~dd_medical.node.service.Node` the options describe (every option checked first)."""
    from ..api import resolve_device
    from .receiver import Limits
    from .sender import Destination, check_ae_title
    from .service import Node, NodeConfig, tls_contexts

    try:
        import pynetdicom  # noqa: F401
    except ImportError as err:
        raise DDMedicalError(NODE_INSTALL_HINT) from err
    if options["destination"] is None:
        raise DDMedicalError("--destination AE@HOST:PORT is required (where derived series are sent)")
    resolve_device(options["device"])
    fit = presets.resolve("denoise", options["preset_name"], iterations=options["iterations"])
    server_tls, client_tls = tls_contexts(options["tls_cert"], options["tls_key"], options["tls_ca"],
                                          options["destination_tls"])
    limits = Limits(max_instance_bytes=int(options["max_instance_mb"] * _MB),
                    max_disk_bytes=int(options["max_disk_gb"] * 1024 * _MB))
    config = NodeConfig(
        work_dir=options["work_dir"], destination=Destination.parse(options["destination"]),
        ae_title=check_ae_title(options["ae_title"], "--ae-title"), host=options["host"], port=options["port"],
        allow=tuple(check_ae_title(a, "--allow") for a in options["allow"]), settle=options["settle"], fit=fit,
        device=options["device"], batch_size=options["batch_size"], org_root=options["org_root"], limits=limits,
        retry_delay=options["retry_delay"], tls=server_tls, destination_tls=client_tls,
    )
    return Node(config)
