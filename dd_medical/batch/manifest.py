"""The batch manifest: one SQLite row per series (status, reason, settings, timings, noise, checksums of the derived
series and of its uncertainty series when one was written, the transfer syntax they were written in, the settings
that decide its pixels), written by the driver.

WAL journal, one committed transaction per change: a run killed at any moment leaves a consistent manifest, and
readers (a progress monitor, a test) can poll it while the run writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.config import FitConfig
from .tasks import SeriesResult

if TYPE_CHECKING:
    from .driver import Planned

MANIFEST_NAME = "manifest.sqlite"
#: ``check``: written and verified like ``done``, but the fidelity check flagged a slice (the reason says which).
STATUSES = ("pending", "done", "check", "failed")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    key TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    split_key TEXT NOT NULL,
    folder TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    n_files INTEGER NOT NULL,
    source_digest TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'check', 'failed')),
    reason TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    slices INTEGER,
    outputs INTEGER,
    checksum TEXT,
    seconds_read REAL,
    seconds_task REAL,
    seconds_write REAL,
    noise_before REAL,
    noise_after REAL,
    excluded TEXT NOT NULL DEFAULT '[]',
    updated TEXT NOT NULL,
    uncertainty_outputs INTEGER,
    uncertainty_checksum TEXT,
    uncertainty_median REAL,
    uncertainty_scale REAL,
    transfer_syntax TEXT,
    transfer_syntax_setting TEXT,
    output_settings TEXT
);
CREATE TABLE IF NOT EXISTS skipped_files (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""
#: Columns added since the first manifests (name, SQL type), appended to an older table when it is opened:
#: the uncertainty series (its file count and checksum, None when none was written) and its map's figures; the UID
#: of the transfer syntax the outputs were written in, and the setting that chose it (``"auto"`` or a UID); the
#: settings that decide the output's values (a JSON object, see ``driver.output_settings``; NULL in older rows).
_ADDED_COLUMNS = (("uncertainty_outputs", "INTEGER"), ("uncertainty_checksum", "TEXT"), ("uncertainty_median", "REAL"),
                  ("uncertainty_scale", "REAL"), ("transfer_syntax", "TEXT"), ("transfer_syntax_setting", "TEXT"),
                  ("output_settings", "TEXT"))


class Manifest:
    """The SQLite manifest of a batch output folder (WAL journal; each change its own transaction)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, timeout=60)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        with self.conn:
            self.conn.executescript(_SCHEMA)
        self._add_columns()
        self._allow_check_status()

    def _add_columns(self) -> None:
        """A manifest written before the columns of :data:`_ADDED_COLUMNS` existed: append them (empty), so its
        columns are the schema's, in order."""
        present = {row["name"] for row in self.conn.execute("PRAGMA table_info(series)")}
        with self.conn:
            for name, kind in _ADDED_COLUMNS:
                if name not in present:
                    self.conn.execute(f"ALTER TABLE series ADD COLUMN {name} {kind}")

    def _allow_check_status(self) -> None:
        """A manifest written before the ``check`` status existed: rebuild its table with the new constraint (rows
        kept), in one transaction."""
        sql = self.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'series'").fetchone()["sql"]
        if "'check'" in sql:
            return
        with self.conn:
            self.conn.execute("ALTER TABLE series RENAME TO series_old")
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT INTO series SELECT * FROM series_old")
            self.conn.execute("DROP TABLE series_old")

    def close(self) -> None:
        self.conn.close()

    def meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, name: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def get(self, key: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM series WHERE key = ?", (key,)).fetchone()
        return None if row is None else dict(row)

    def rows(self) -> list[dict]:
        """All series rows, ordered by key."""
        return [dict(r) for r in self.conn.execute("SELECT * FROM series ORDER BY key")]

    def schedule(self, item: Planned, task: str, config: FitConfig, transfer_syntax_setting: str = "auto",
                 output_settings: dict | None = None) -> None:
        """Insert or reset ``item`` to ``pending`` (kept counters: attempts), with the settings it is run with:
        ``config``, ``transfer_syntax_setting`` (``"auto"`` or the UID asked for) and ``output_settings`` (the
        settings that decide the output's values, a JSON-able dict; None: not recorded)."""
        with self.conn:
            self.conn.execute(
                """INSERT INTO series (key, series_uid, split_key, folder, modality, n_files, source_digest, status,
                       reason, task, config, excluded, updated, transfer_syntax_setting, output_settings)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', '', ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET folder=excluded.folder, modality=excluded.modality,
                       n_files=excluded.n_files, source_digest=excluded.source_digest, status='pending', reason='',
                       task=excluded.task, config=excluded.config, excluded=excluded.excluded,
                       updated=excluded.updated, transfer_syntax_setting=excluded.transfer_syntax_setting,
                       output_settings=excluded.output_settings""",
                (item.key, item.series.series_uid, item.series.split_key, item.folder, item.series.modality,
                 len(item.series.files), item.source_digest, task, json.dumps(asdict(config)),
                 json.dumps(item.excluded), _now(), transfer_syntax_setting,
                 None if output_settings is None else json.dumps(output_settings, sort_keys=True)),
            )

    def record(self, result: SeriesResult) -> None:
        with self.conn:
            self.conn.execute(
                """UPDATE series SET status=?, reason=?, attempts=attempts+1, slices=?, outputs=?, checksum=?,
                       seconds_read=?, seconds_task=?, seconds_write=?, noise_before=?, noise_after=?, updated=?,
                       uncertainty_outputs=?, uncertainty_checksum=?, uncertainty_median=?, uncertainty_scale=?,
                       transfer_syntax=?
                   WHERE key=?""",
                (result.status, result.reason, result.slices, result.outputs, result.checksum, result.seconds_read,
                 result.seconds_task, result.seconds_write, result.noise_before, result.noise_after, _now(),
                 result.uncertainty_outputs, result.uncertainty_checksum, result.uncertainty_median,
                 result.uncertainty_scale, result.transfer_syntax or None, result.key),
            )

    def set_skipped_files(self, files: Iterable[tuple[str, str]]) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM skipped_files")
            self.conn.executemany("INSERT OR REPLACE INTO skipped_files VALUES (?, ?)", list(files))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
