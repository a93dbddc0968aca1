"""Structured logs of the DICOM node: one JSON object (or one ``key=value`` line) per event, UIDs and AE titles only.

Every node event is logged through :func:`event` with a name and fields; the formatter writes ``time``, ``level``,
``event`` and the fields. Nothing here ever receives a patient attribute: callers pass UIDs, AE titles, counts,
seconds and reasons built from those.
"""

from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger("dd_medical.node")

#: Library loggers that could say more than UIDs at their chatty levels: kept at WARNING.
_QUIET = ("pynetdicom",)


def event(name: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one node event: ``name`` (``"series"``, ``"instance"``, ``"association"``, ``"send"``, ...) and its
    fields (UIDs, AE titles, counts, seconds, a status, a reason)."""
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    log.log(level, "%s %s", name, text, extra={"node_event": name, "node_fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, then ``event`` and its fields
    for node events, else ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        data: dict[str, object] = {"time": stamp, "level": record.levelname, "logger": record.name}
        name = getattr(record, "node_event", None)
        if name is not None:
            data["event"] = name
            data.update(getattr(record, "node_fields", {}))
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(data, default=str)


def configure(log_format: str = "json", level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON lines (``"json"``) or ``time level message`` lines (``"text"``)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
