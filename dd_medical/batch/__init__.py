"""Folder-tree batch runs: every image series under INPUT_ROOT in, one derived series per volume out, resumable.

```python
from dd_medical.batch import run_batch
from dd_medical.presets import resolve

summary = run_batch("export/", "denoised/", config=resolve("denoise", "fast"))
print(summary.format())          # done / skipped / failed with reasons; exit code 0 only when summary.ok
```

Layout of OUTPUT_ROOT::

    manifest.sqlite          one row per volume: status pending/done/failed + reason, timings, noise, checksum
    series/S<hash>/IM0001.dcm  derived DICOM series; the folder name is a hash of "SeriesInstanceUID#split"
    series/S<hash>-uncertainty/  with ``uncertainty=True`` (--uncertainty): its uncertainty map, a derived series
    report/S<hash>.png       middle slice before | after | difference (| uncertainty, labelled, with its scale)
    report.html              summary, per-series table with montages, bad input files with reasons
    receipts/S<hash>.json    only while a Ray run is going: written by a task after its outputs, removed once recorded

The manifest is SQLite (stdlib ``sqlite3``) in WAL mode: every status change is one committed transaction, so a
run killed at any moment leaves a consistent manifest (no torn JSON line to repair), readers (a progress monitor,
a test) can poll it while the run writes, and a future multi-worker driver gets queries by status for free. Only
the driver writes it; :func:`process_series` is pure apart from its atomic outputs, so executors (``serial``, or
``ray``: :class:`RayExecutor`, tasks on a Ray cluster with retries and slice chunks) can run it anywhere. A rerun
skips volumes that are done once their output folder is verified (same file count and SHA-256 checksum as
recorded, same source files, same settings but speed-only ones: ``driver.output_settings``), removes temporary
leftovers of a killed run and redoes the rest; failed volumes are retried with ``retry_failed=True``. Messages name
UIDs, output folders and input files (relative to INPUT_ROOT) only, never patient attributes.
"""

from __future__ import annotations

from .driver import LOCK_NAME, REPORT_NAME, BatchSummary, check_roots, output_folder_name, run_batch
from .executors import EXECUTORS, RAY_INSTALL_HINT, Executor, RayExecutor, SerialExecutor, TaskWrapper, import_ray
from .manifest import MANIFEST_NAME, Manifest
from .tasks import (
    MONTAGE_DIR,
    RECEIPT_DIR,
    SERIES_DIR,
    TASKS,
    UNCERTAINTY_SUFFIX,
    SeriesResult,
    SeriesTask,
    folder_checksum,
    process_series,
    uncertainty_folder_name,
    verify_outputs,
)

__all__ = [
    "EXECUTORS",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MONTAGE_DIR",
    "RAY_INSTALL_HINT",
    "RECEIPT_DIR",
    "REPORT_NAME",
    "SERIES_DIR",
    "TASKS",
    "UNCERTAINTY_SUFFIX",
    "BatchSummary",
    "Executor",
    "Manifest",
    "RayExecutor",
    "SerialExecutor",
    "SeriesResult",
    "SeriesTask",
    "TaskWrapper",
    "check_roots",
    "folder_checksum",
    "import_ray",
    "output_folder_name",
    "process_series",
    "run_batch",
    "uncertainty_folder_name",
    "verify_outputs",
]
