"""The durable instance store: one DICOM Part 10 file per SOP Instance UID.

A file is written to a temporary name in its final directory, flushed (and fsynced when
``durability = "fsync"``) and renamed over its final name: a reader, or a node restarted after
a kill, sees either nothing or the complete file, never a partial one (rename is atomic on
POSIX file systems). The directory entries are fsynced by :meth:`sync_dirs` before the database
commit that acknowledges them, so that after a power loss a row never points to a missing file.

Layout: ``<root>/<h>/<sop_instance_uid>.dcm`` with ``h`` the first two hex digits of the UID's
SHA-1, which spreads instances over 256 directories (no huge directory, few directory fsyncs).
Data sets being received are streamed by pynetdicom into ``<root>/.incoming/`` (same file
system), so an accepted one is renamed into place, never copied.

A stored file is never replaced by a different one: :meth:`InstanceStore.instance_lock`
serialises the receptions of one SOP Instance UID, and the receive path compares a resend with
the stored file (:func:`same_data_set`) before deciding (see node.ingest).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pydicom

from node.errors import DiskFullError, StoreError

# PS3.5 9.1: a UID is digits and dots, at most 64 characters; anything else never becomes a path.
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
INCOMING = ".incoming"  # data sets being received (pynetdicom writes them here)
_COMPARE_CHUNK = 1 << 20


def valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and bool(UID_RE.match(uid))


class InstanceStore:
    """Writes and reads instance files under ``root``."""

    def __init__(self, root: Path, *, fsync: bool = True, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(exist_ok=True)
        self._made_dirs: set[str] = set()
        self._lock = threading.Lock()
        self._busy_uids: set[str] = set()
        self._syncer: ThreadPoolExecutor | None = None
        self._uid_free = threading.Condition(self._lock)

    @contextmanager
    def instance_lock(self, sop_instance_uid: str) -> Iterator[None]:
        """Serialise the handling of one SOP Instance UID within this process.

        Two associations delivering the same UID at once would otherwise both see "not stored
        yet" and the second rename would replace the first file under its committed row.
        """
        with self._uid_free:
            while sop_instance_uid in self._busy_uids:
                self._uid_free.wait()
            self._busy_uids.add(sop_instance_uid)
        try:
            yield
        finally:
            with self._uid_free:
                self._busy_uids.discard(sop_instance_uid)
                self._uid_free.notify_all()

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

    def begin_write(self, sop_instance_uid: str, *parts: bytes | memoryview) -> PendingFile:
        """Write the concatenation of ``parts`` to a temporary file beside its final name.

        The file is not visible under its final name until :meth:`PendingFile.finish`, which
        the receive path runs while the database commits the instance's row (both are waited
        for before the acknowledgement; see node.ingest).
        """
        rel = self.relpath(sop_instance_uid)
        final = self.root / rel
        directory = final.parent
        if rel[:2] not in self._made_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made_dirs.add(rel[:2])
        tmp = directory / f".{final.name}.{threading.get_ident()}.tmp"
        fd = -1
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            for part in parts:
                view = memoryview(part)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            _unlink_quietly(tmp)
            raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from exc
        return PendingFile(self, rel, tmp, final, fd)

    def adopt(self, sop_instance_uid: str, received: Path) -> PendingFile:
        """Take a received Part 10 file from the incoming folder; :meth:`PendingFile.finish`
        fsyncs it and renames it to its final name (same file system: no copy)."""
        rel = self.relpath(sop_instance_uid)
        final = self.root / rel
        if rel[:2] not in self._made_dirs:
            final.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made_dirs.add(rel[:2])
        try:
            fd = os.open(received, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"cannot open the received file {received}: {exc.strerror or exc}") from exc
        return PendingFile(self, rel, received, final, fd)

    def write(self, sop_instance_uid: str, *parts: bytes | memoryview) -> tuple[str, Path]:
        """Write one Part 10 file atomically and durably (per ``fsync``); returns
        (relative path, its directory)."""
        pending = self.begin_write(sop_instance_uid, *parts)
        pending.finish()
        return pending.relpath, pending.final.parent

    def sync_dirs_async(self, directories: set[Path]) -> Future[None]:
        """:meth:`sync_dirs` on a helper thread (see :meth:`PendingFile.finish`)."""
        with self._lock:
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dir-fsync")
        return self._syncer.submit(self.sync_dirs, directories)

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

    def remove(self, relpath: str) -> bool:
        """Delete one instance file (retention); False when it was already gone."""
        path = self.root / relpath
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot remove {path}: {exc.strerror or exc}") from exc
        return True

    def files_older_than(self, cutoff: float) -> Iterator[str]:
        """Relative paths of the instance files last modified before ``cutoff`` (epoch seconds)."""
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            for entry in os.scandir(directory):
                if entry.name.endswith(".dcm") and not entry.name.startswith("."):
                    try:
                        if entry.stat().st_mtime < cutoff:
                            yield f"{directory.name}/{entry.name}"
                    except FileNotFoundError:  # removed meanwhile (retention)
                        continue

    def remove_temporaries(self) -> int:
        """At start-up: delete temporary files left by a killed process (never acknowledged)."""
        removed = 0
        for tmp in [*self.root.glob("*/.*.tmp"), *self.incoming.glob("*")]:
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed


def data_set_offset(path: Path) -> int:
    """Where the data set starts in a Part 10 file: after the preamble, "DICM" and the File
    Meta Information group whose length (0002,0000) is its first element (PS3.10 7.1)."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise StoreError(f"{path} is not a Part 10 file with a File Meta group length")
    return 144 + struct.unpack_from("<L", head, 140)[0]


def same_data_set(a: Path, b: Path) -> bool:
    """True when two Part 10 files carry byte-identical data sets (their File Meta may differ,
    e.g. the Source AE Title of a resend from another sender)."""
    return same_bytes_from(a, data_set_offset(a), b, data_set_offset(b))


def same_bytes_from(a: Path, a_at: int, b: Path, b_at: int) -> bool:
    """True when file ``a`` from ``a_at`` and file ``b`` from ``b_at`` to their ends hold the same
    bytes. Reads both in 1 MiB chunks."""
    if a.stat().st_size - a_at != b.stat().st_size - b_at:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_at)
        fb.seek(b_at)
        while True:
            chunk = fa.read(_COMPARE_CHUNK)
            if chunk != fb.read(_COMPARE_CHUNK):
                return False
            if not chunk:
                return True


# What makes two copies under one SOP Instance UID the same object (PS3.3 C.12.1.1.1): whose image
# it is, where it belongs and its pixel grid. A lossless re-encoding keeps them all; another
# patient's image, a misfiled one or a corrected header does not.
IDENTITY_KEYWORDS = (
    "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
    "AccessionNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
)


def identity_difference(a: Path, b: Path) -> str | None:
    """The first identity attribute (:data:`IDENTITY_KEYWORDS`) two Part 10 files disagree on, by
    keyword (never its values: they may name the patient); None when they agree, or "data set"
    when one cannot be read."""
    try:
        first, second = (pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTITY_KEYWORDS))
                         for path in (a, b))
        for keyword in IDENTITY_KEYWORDS:
            if first.get(keyword) != second.get(keyword):
                return keyword
    except Exception:  # noqa: BLE001 - pydicom raises many types on a bad file: not the same object
        return "data set"
    return None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


class PendingFile:
    """A written temporary file: :meth:`finish` makes it durable and visible, :meth:`abort` drops it."""

    def __init__(self, store: InstanceStore, relpath: str, tmp: Path, final: Path, fd: int) -> None:
        self.store, self.relpath, self.tmp, self.final, self._fd = store, relpath, tmp, final, fd

    def finish(self) -> None:
        """Rename over the final name, then fsync the data and the directory (durability
        "fsync") at the same time; both are done when this returns, before any row is committed.

        The two fsyncs run in parallel because the file system then writes both in one journal
        commit (measured on ext4: 6.5 ms one after the other, 0.9 ms together). Renaming first is
        safe: until this returns no row names the file, and a file without a row is never read
        and is replaced by the next copy of its UID (see node.ingest).
        """
        try:
            os.replace(self.tmp, self.final)
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot write {self.final}: {exc.strerror or exc}") from exc
        try:
            if self.store.fsync:
                directory = self.store.sync_dirs_async({self.final.parent})
                try:
                    os.fsync(self._fd)
                finally:
                    directory.result()
        except OSError as exc:
            raise StoreError(f"cannot write {self.final}: {exc.strerror or exc}") from exc
        finally:
            os.close(self._fd)
            self._fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        _unlink_quietly(self.tmp)


def encode_part10(ds: pydicom.Dataset) -> bytes:
    """Encode a dataset (with its file_meta) as a Part 10 file, for derived objects."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
