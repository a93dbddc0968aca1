"""The node's own state: ``WORK_DIR/node.sqlite``, one row per received instance, per source series and per derived
series to send (with the files the destination has acknowledged).

SQLite in WAL mode, every change one committed transaction (``synchronous=FULL``), so a node killed at any moment
restarts from a consistent state. The received files are the truth for what was received (:meth:`NodeState.reconcile`
registers a file written just before a kill); this database holds timings, statuses and what was sent. One
connection shared by the node's threads behind a lock; only UIDs, AE titles, counts and reasons are stored.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

STATE_NAME = "node.sqlite"
#: Statuses of a source series, in the order they are reached. ``received``: complete (settled), waiting for the
#: processing worker; ``sending``: derived series written, waiting for the destination's acknowledgement.
SERIES_STATUSES = ("receiving", "received", "processing", "sending", "sent", "failed")
#: Statuses of a derived series to send. ``started``: some instances may be at the destination, so it is sent to
#: the end even when its source series starts again; ``superseded``: never started, replaced by a newer result.
SEND_STATUSES = ("pending", "started", "sent", "superseded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    instances INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    calling_ae TEXT NOT NULL DEFAULT '',
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_uid);
CREATE TABLE IF NOT EXISTS sends (
    id TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    key TEXT NOT NULL,
    generation INTEGER NOT NULL,
    files INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    sent REAL
);
CREATE TABLE IF NOT EXISTS sent_files (send_id TEXT NOT NULL, file TEXT NOT NULL, PRIMARY KEY (send_id, file));
CREATE TABLE IF NOT EXISTS rejected (
    time REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


class NodeState:
    """``node.sqlite`` of a work dir (see the module docstring); safe to use from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _rows(self, sql: str, args: Iterable = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.conn.execute(sql, tuple(args))]

    # -- instances ------------------------------------------------------------------------------------------------

    def instance(self, sop_uid: str) -> dict | None:
        rows = self._rows("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,))
        return rows[0] if rows else None

    def instance_files(self, series_uid: str) -> list[str]:
        """Files (relative to the work dir) of the instances of ``series_uid``, sorted."""
        return sorted(r["file"] for r in self._rows("SELECT file FROM instances WHERE series_uid = ?", (series_uid,)))

    def add_instance(self, *, sop_uid: str, series_uid: str, folder: str, file: str, size: int, sha256: str,
                     modality: str, calling_ae: str, now: float) -> str | None:
        """Record a new (or replaced) instance; its series is ``receiving`` again. Derived series of the series that
        were never started are superseded. Returns the series' previous status (None: a new series)."""
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                         (sop_uid, series_uid, file, size, sha256, now))
            count = conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series_uid,)).fetchone()[0]
            row = conn.execute("SELECT status FROM series WHERE uid = ?", (series_uid,)).fetchone()
            if row is None:
                conn.execute("""INSERT INTO series (uid, folder, modality, status, instances, calling_ae,
                                    first_received, last_received, updated)
                                VALUES (?, ?, ?, 'receiving', ?, ?, ?, ?, ?)""",
                             (series_uid, folder, modality, count, calling_ae, now, now, now))
                return None
            conn.execute("""UPDATE series SET status='receiving', reason='', instances=?, calling_ae=?,
                                last_received=?, updated=? WHERE uid=?""",
                         (count, calling_ae, now, now, series_uid))
            conn.execute("""UPDATE sends SET status='superseded' WHERE series_uid=? AND status='pending'
                                AND NOT EXISTS (SELECT 1 FROM sent_files WHERE send_id = sends.id)""", (series_uid,))
            return str(row["status"])

    def forget_instances(self, sop_uids: Iterable[str]) -> None:
        """Remove the rows of instances whose files are gone (and recount their series)."""
        with self._transaction() as conn:
            for uid in sop_uids:
                conn.execute("DELETE FROM instances WHERE sop_uid = ?", (uid,))
            conn.execute("""UPDATE series SET instances =
                                (SELECT COUNT(*) FROM instances WHERE instances.series_uid = series.uid)""")

    def all_instances(self) -> list[dict]:
        return self._rows("SELECT * FROM instances")

    def add_rejected(self, *, calling_ae: str, series_uid: str, sop_uid: str, reason: str, now: float) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO rejected VALUES (?, ?, ?, ?, ?)", (now, calling_ae, series_uid, sop_uid, reason))

    def rejected(self) -> list[dict]:
        return self._rows("SELECT * FROM rejected ORDER BY time")

    # -- series ---------------------------------------------------------------------------------------------------

    def series(self, uid: str) -> dict | None:
        rows = self._rows("SELECT * FROM series WHERE uid = ?", (uid,))
        return rows[0] if rows else None

    def all_series(self) -> list[dict]:
        return self._rows("SELECT * FROM series ORDER BY first_received, uid")

    def with_status(self, *statuses: str) -> list[dict]:
        """Series in any of ``statuses``, the longest waiting first."""
        marks = ", ".join("?" * len(statuses))
        return self._rows(f"SELECT * FROM series WHERE status IN ({marks}) ORDER BY last_received, uid", statuses)

    def set_status(self, uid: str, status: str, reason: str = "", *, expect: str | None = None,
                   now: float | None = None) -> bool:
        """Set the status of a series (only when it is ``expect``, if given); whether it was set."""
        if status not in SERIES_STATUSES:
            raise ValueError(f"unknown series status {status!r}")
        sql = "UPDATE series SET status=?, reason=?, updated=? WHERE uid=?"
        args: list = [status, reason, time.time() if now is None else now, uid]
        if expect is not None:
            sql += " AND status=?"
            args.append(expect)
        with self._transaction() as conn:
            return conn.execute(sql, args).rowcount == 1

    def mark_received(self, uid: str, now: float) -> int | None:
        """A ``receiving`` series is complete: ``received``, with a new generation (returned; None if the series was
        not ``receiving``)."""
        with self._transaction() as conn:
            changed = conn.execute("""UPDATE series SET status='received', reason='', generation=generation+1,
                                          updated=? WHERE uid=? AND status='receiving'""", (now, uid)).rowcount
            if not changed:
                return None
            return int(conn.execute("SELECT generation FROM series WHERE uid=?", (uid,)).fetchone()[0])

    def start_sending(self, uid: str, generation: int, sends: list[tuple[str, str, int]], reason: str,
                      now: float) -> bool:
        """A ``processing`` series of ``generation`` has its derived series: ``sends`` ``(id, key, files)`` become
        pending and the series ``sending``. False, with nothing recorded, when the series started again meanwhile
        (a new instance arrived)."""
        with self._transaction() as conn:
            changed = conn.execute("""UPDATE series SET status='sending', reason=?, updated=?
                                      WHERE uid=? AND status='processing' AND generation=?""",
                                   (reason, now, uid, generation)).rowcount
            if not changed:
                return False
            for send_id, key, files in sends:
                conn.execute("""INSERT INTO sends (id, series_uid, key, generation, files, status, created)
                                VALUES (?, ?, ?, ?, ?, 'pending', ?)
                                ON CONFLICT(id) DO UPDATE SET status='pending' WHERE status='superseded'""",
                             (send_id, uid, key, generation, files, now))
            return True

    # -- sends ----------------------------------------------------------------------------------------------------

    def sends(self, *statuses: str) -> list[dict]:
        marks = ", ".join("?" * len(statuses))
        return self._rows(f"SELECT * FROM sends WHERE status IN ({marks}) ORDER BY created, id", statuses)

    def send(self, send_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM sends WHERE id = ?", (send_id,))
        return rows[0] if rows else None

    def claim_send(self, send_id: str) -> bool:
        """Mark a pending send ``started`` (so it is finished even if its series starts again); False when it was
        superseded or sent meanwhile."""
        with self._transaction() as conn:
            conn.execute("UPDATE sends SET status='started' WHERE id=? AND status='pending'", (send_id,))
            row = conn.execute("SELECT status FROM sends WHERE id=?", (send_id,)).fetchone()
            return row is not None and row["status"] == "started"

    def drop_send(self, send_id: str) -> str:
        """Mark a send ``superseded`` (its outbox is gone); returns its series' UID."""
        with self._transaction() as conn:
            conn.execute("UPDATE sends SET status='superseded' WHERE id=?", (send_id,))
            return str(conn.execute("SELECT series_uid FROM sends WHERE id=?", (send_id,)).fetchone()[0])

    def sent_files(self, send_id: str) -> set[str]:
        return {r["file"] for r in self._rows("SELECT file FROM sent_files WHERE send_id = ?", (send_id,))}

    def mark_file_sent(self, send_id: str, name: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO sent_files VALUES (?, ?)", (send_id, name))

    def send_failed(self, send_id: str, error: str, next_try: float) -> int:
        """Record a failed attempt; returns the number of attempts so far."""
        with self._transaction() as conn:
            conn.execute("UPDATE sends SET attempts=attempts+1, last_error=?, next_try=? WHERE id=?",
                         (error, next_try, send_id))
            return int(conn.execute("SELECT attempts FROM sends WHERE id=?", (send_id,)).fetchone()[0])

    def send_done(self, send_id: str, now: float) -> bool:
        """The destination acknowledged every file of ``send_id``; True when that finished its series (``sent``)."""
        with self._transaction() as conn:
            conn.execute("UPDATE sends SET status='sent', sent=?, last_error='' WHERE id=?", (now, send_id))
            uid = conn.execute("SELECT series_uid FROM sends WHERE id=?", (send_id,)).fetchone()[0]
            left = conn.execute("SELECT COUNT(*) FROM sends WHERE series_uid=? AND status IN ('pending', 'started')",
                                (uid,)).fetchone()[0]
            if left:
                return False
            return conn.execute("UPDATE series SET status='sent', updated=? WHERE uid=? AND status='sending'",
                                (now, uid)).rowcount == 1
