"""The node's work dir: where received instances, the batch input and output, and the outbox live, and its lock.

Layout::

    node.sqlite              the node's state (:mod:`dd_medical.node.state`)
    incoming/<random>/       an instance being written and checked; never acknowledged from here
    instances/S<hash>/I<hash>.dcm   every received instance, one folder per source series (hashes of UIDs)
    input/S<hash>/           the series being processed: hard links to its instances (the batch input root)
    batch/                   the batch output root: manifest.sqlite, series/, report/, report.html
    outbox/<folder>.g<n>/    hard links to a derived series until the destination acknowledged every file

Folder and file names are hashes of UIDs, never patient data. Everything lives on one file system, so a rename is
atomic and a hard link costs no space.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError

LOCK_NAME = ".dd-medical-node.lock"


def _hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link to ``source`` at ``target``; a copy where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class WorkDir:
    """The folders of a work dir (created when missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise InputError("work dir exists and is not a folder", self.root)
        self.incoming = self.root / "incoming"
        self.instances = self.root / "instances"
        self.input = self.root / "input"
        self.batch = self.root / "batch"
        self.outbox = self.root / "outbox"
        for folder in (self.root, self.incoming, self.instances, self.input, self.batch, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def series_folder(series_uid: str) -> str:
        """``S`` + 20 hex digits of SHA-256 of the SeriesInstanceUID."""
        return "S" + _hash(series_uid, 20)

    @staticmethod
    def instance_name(sop_uid: str) -> str:
        """``I`` + 24 hex digits of SHA-256 of the SOPInstanceUID, ``.dcm``."""
        return "I" + _hash(sop_uid, 24) + ".dcm"

    def usage(self) -> int:
        """Bytes of all files under the work dir (a file with several hard links counted once)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                with contextlib.suppress(OSError):
                    info = os.lstat(os.path.join(dirpath, name))
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_size
        return total

    def clear(self, folder: Path) -> None:
        """Remove everything inside ``folder`` (leftovers of a killed run: never acknowledged, or rebuilt)."""
        for path in folder.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the work dir (released by the OS even if the process is killed)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        with open(self.root / LOCK_NAME, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise InputError("another dd-medical node is running on this work dir", self.root) from err
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
