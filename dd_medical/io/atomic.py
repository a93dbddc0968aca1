"""Outputs that appear only when complete: write into a temporary sibling, then rename into place.

The temporary file or folder lives in the same folder as the final one (same file system), so the final rename is
atomic: a reader sees either nothing (or the old output, when replacing) or the complete new output, never a
half-written one. On any exception the temporary output is removed and nothing at the final path changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from dd_medical.errors import InputError

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def full_suffix(path: str | Path) -> str:
    """The format suffix of a file name, lower case: ``".nii.gz"`` for ``a.b.nii.gz``, ``".nrrd"`` for ``x.nrrd``."""
    name = Path(path).name.lower()
    suffix = Path(name).suffix
    if suffix in _COMPRESSION_SUFFIXES:
        inner = Path(name[: -len(suffix)]).suffix
        return inner + suffix if inner else suffix
    return suffix


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def atomic_output_dir(final_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final_dir``; on success rename it to ``final_dir``.

    ``final_dir`` may not exist yet, or be an empty folder. A non-empty existing ``final_dir`` raises
    :class:`~dd_medical.errors.InputError` (before any work is done) unless ``overwrite=True``, in which case the
    old folder is replaced as a whole once the new one is complete. Its parent folders are created if needed.
    """
    final_dir = Path(final_dir).absolute()
    if final_dir.exists() and not final_dir.is_dir():
        raise InputError("output folder path exists and is not a folder", final_dir)
    if final_dir.exists() and not overwrite and not _is_empty_dir(final_dir):
        raise InputError("output folder already exists and is not empty (refusing to overwrite)", final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = final_dir.with_name(f".{final_dir.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp_dir.mkdir()  # permissions from the umask, as for a plain mkdir (mkdtemp would give 0700)
    try:
        yield tmp_dir
        _move_dir_into_place(tmp_dir, final_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _move_dir_into_place(tmp_dir: Path, final_dir: Path, *, overwrite: bool) -> None:
    if not final_dir.exists():
        os.replace(tmp_dir, final_dir)
        return
    if _is_empty_dir(final_dir):
        final_dir.rmdir()
        os.replace(tmp_dir, final_dir)
        return
    if not overwrite:
        raise InputError("output folder appeared while writing and is not empty (refusing to overwrite)", final_dir)
    old_dir = final_dir.with_name(f".{final_dir.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(final_dir, old_dir)
    try:
        os.replace(tmp_dir, final_dir)
    except BaseException:
        os.replace(old_dir, final_dir)
        raise
    shutil.rmtree(old_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_file(final_path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path`` with the same format suffix (``.nii.gz`` stays ``.nii.gz``).

    Write the file at the yielded path; on success it is flushed to disk and renamed to ``final_path``. An existing
    ``final_path`` raises :class:`~dd_medical.errors.InputError` (before any work is done) unless
    ``overwrite=True``. Parent folders are created if needed. The yielded path does not exist yet.
    """
    final_path = Path(final_path).absolute()
    if final_path.is_dir():
        raise InputError("output file path is an existing folder", final_path)
    if final_path.exists() and not overwrite:
        raise InputError("output file already exists (refusing to overwrite)", final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(final_path)
    stem = final_path.name[: len(final_path.name) - len(suffix)] if suffix else final_path.name
    tmp_path = final_path.with_name(f".{stem}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp_path
        if not tmp_path.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary output {tmp_path}")
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        if final_path.exists() and not overwrite:
            raise InputError("output file appeared while writing (refusing to overwrite)", final_path)
        os.replace(tmp_path, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
