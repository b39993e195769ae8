"""The durable instance store: one DICOM Part 10 file per SOP Instance UID.

A file is written to a temporary name in its final directory, flushed (and fsynced when
``durability = "fsync"``) and renamed over its final name: a reader, or a node restarted after
a kill, sees either nothing or the complete file, never a partial one (rename is atomic on
POSIX file systems). The directory entries are fsynced by :meth:`sync_dirs` before the database
commit that acknowledges them, so that after a power loss a row never points to a missing file.

Layout: ``<root>/<h>/<sop_instance_uid>.dcm`` with ``h`` the first two hex digits of the UID's
SHA-1, which spreads instances over 256 directories (no huge directory, few directory fsyncs).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import threading
from pathlib import Path

import pydicom

from node.errors import DiskFullError, StoreError

# PS3.5 9.1: a UID is digits and dots, at most 64 characters; anything else never becomes a path.
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and bool(UID_RE.match(uid))


class InstanceStore:
    """Writes and reads instance files under ``root``."""

    def __init__(self, root: Path, *, fsync: bool = True, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._made_dirs: set[str] = set()
        self._lock = threading.Lock()

    def relpath(self, sop_instance_uid: str) -> str:
        if not valid_uid(sop_instance_uid):
            raise StoreError(f"not a valid UID for a file name: {sop_instance_uid!r}")
        prefix = hashlib.sha1(sop_instance_uid.encode("ascii")).hexdigest()[:2]
        return f"{prefix}/{sop_instance_uid}.dcm"

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def check_free_space(self, incoming_bytes: int = 0) -> None:
        """Raise DiskFullError when writing ``incoming_bytes`` would go below the watermark."""
        if self.min_free_bytes <= 0:
            return
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.min_free_bytes:
            raise DiskFullError(
                f"free space on {self.root} is {free // 2**20} MiB, below min_free_disk_mb "
                f"({self.min_free_bytes // 2**20} MiB): refusing new data"
            )

    def write(self, sop_instance_uid: str, *parts: bytes | memoryview) -> tuple[str, Path]:
        """Write one Part 10 file (the concatenation of ``parts``) atomically.

        Returns (relative path, directory to sync).

        The caller must call :meth:`sync_dirs` on the returned directories before it
        acknowledges the instance when durability is "fsync".
        """
        rel = self.relpath(sop_instance_uid)
        final = self.root / rel
        directory = final.parent
        if rel[:2] not in self._made_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made_dirs.add(rel[:2])
        tmp = directory / f".{final.name}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from exc
        return rel, directory

    def sync_dirs(self, directories: set[Path]) -> None:
        """fsync directory entries (the renames) so they survive a power loss."""
        if not self.fsync:
            return
        for directory in directories:
            try:
                fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StoreError(f"cannot fsync directory {directory}: {exc.strerror or exc}") from exc

    def read(self, relpath: str) -> pydicom.Dataset:
        path = self.root / relpath
        try:
            return pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc

    def read_bytes(self, relpath: str) -> bytes:
        path = self.root / relpath
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def remove_temporaries(self) -> int:
        """At start-up: delete temporary files left by a killed process (never acknowledged)."""
        removed = 0
        for tmp in self.root.glob("*/.*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed


def encode_part10(ds: pydicom.Dataset) -> bytes:
    """Encode a dataset (with its file_meta) as a Part 10 file, for derived objects."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
