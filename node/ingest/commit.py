"""The durable commit path: a checked instance becomes a file in the store and a row, in that order.

:func:`store_received` (a file pynetdicom streamed into the store's incoming folder) and
:func:`store_durably` (bytes) keep the bytes exactly as received (file meta + the peer's encoded
data set, no re-encoding): rename to the final name, fsync the file and its directory (in
parallel), and only then submit the row to the :class:`GroupCommitter`, which inserts the rows
of every instance waiting at that moment in ONE transaction (one WAL fsync) and wakes their
handlers. A SOP Instance UID already stored is never replaced: a resend of the same object
(byte-identical or re-encoded) is acknowledged again without new work, another object under that
UID (another patient, study or pixel grid) is refused (0x0111), and the first copy stays.

The worker's result objects take the same road (:func:`store_result`): one function,
:func:`durable_record`, makes a file durable and builds the row that names it, whoever commits it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.errors import DatabaseError, InvalidInstanceError, StoreError
from node.ingest.header import Header, pixel_element_offset
from node.ingest.status import STATUS_DUPLICATE_CONFLICT
from node.logs import log_event
from node.repository import InstanceRecord, Repository
from node.store import (
    InstanceStore,
    PendingFile,
    encode_part10,
    identity_difference,
    same_bytes_from,
    same_data_set,
)

log = logging.getLogger("node.ingest")


class CommitTicket:
    """One instance waiting for its group commit."""

    __slots__ = ("record", "done", "error", "inserted")

    def __init__(self, record: InstanceRecord) -> None:
        self.record = record
        self.done = threading.Event()
        self.error: Exception | None = None
        self.inserted = False  # False for a resend of a known SOP Instance UID

    def wait(self, timeout: float) -> None:
        """Block until committed; raise DatabaseError otherwise."""
        if not self.done.wait(timeout):
            raise DatabaseError(f"database commit did not finish within {timeout} s")
        if self.error is not None:
            raise self.error


class GroupCommitter:
    """Commits received instances in batches; each handler waits for its own commit.

    Handlers make their file durable first, then submit their row; this thread commits every
    row waiting at that moment in one transaction (one WAL fsync), so a row never names a file
    that is not on disk. Waiting is bounded by ``timeout``: a handler that gives up returns a failure status.
    """

    def __init__(self, repo: Repository, *, batch_max: int = 256, timeout: float = 30.0) -> None:
        self.repo = repo
        self.batch_max = batch_max
        self.timeout = timeout
        self._pending: list[CommitTicket] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, record: InstanceRecord) -> CommitTicket:
        ticket = CommitTicket(record)
        with self._cond:
            if self._stopping:
                raise DatabaseError("node is shutting down")
            self._pending.append(ticket)
            self._cond.notify()
        return ticket

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait(1.0)
                if not self._pending and self._stopping:
                    return
                batch = self._pending[: self.batch_max]
                del self._pending[: self.batch_max]
            error: Exception | None = None
            inserted: set[str] = set()
            try:
                inserted = self.repo.record_instances([t.record for t in batch])
            except DatabaseError as exc:
                error = exc
            except Exception as exc:  # never let the commit thread die: fail the batch instead
                log.exception("group commit failed")
                error = DatabaseError(f"commit failed: {exc}")
            for ticket in batch:
                ticket.error = error
                ticket.inserted = ticket.record.sop_instance_uid in inserted
                ticket.done.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is waiting, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)


class DuplicateInstanceError(InvalidInstanceError):
    """The SOP Instance UID is already stored with other content: refused, the first copy stays."""

    def __init__(self, message: str) -> None:
        super().__init__(message, STATUS_DUPLICATE_CONFLICT)


def _already_stored(
    store: InstanceStore, repo: Repository, header: Header, candidate: Path, transfer_syntax: str
) -> bool:
    """True for a resend of a stored instance (byte-identical, or the same object re-encoded: same
    identity attributes, node.store.IDENTITY_KEYWORDS) or a copy of one of the node's own result
    objects: acknowledge, no new work, the first copy kept. Raises DuplicateInstanceError for a
    copy that is another object under the same UID; False when the UID is not stored yet.

    The stored file and its row always describe the same data set: a row exists only for a
    file that was completely written, so a file without a row is a copy that was never
    acknowledged (the node was killed before its commit) and may be replaced. Called with the
    UID's instance lock held.
    """
    uid = header.sop_instance_uid
    if not store.path(store.relpath(uid)).exists():
        return False
    record = repo.find_instance(uid)
    if record is None:
        return False
    if record.derived:
        # One of the node's own results, sent back (a PACS forwarding the whole study again, or a
        # routing rule that echoes everything): the node holds that SOP Instance already, so it is
        # acknowledged without new work; the copy is neither stored nor analysed (no result loop).
        return True
    stored = store.path(record.path)
    same_syntax = str(record.transfer_syntax_uid) == str(transfer_syntax)
    if same_syntax and same_data_set(stored, candidate):
        return True
    # Other bytes: the same object re-encoded (another transfer syntax, a toolkit that rewrites
    # lengths or padding: GDCM's gdcmscu resending a file dcmsend delivered first) is acknowledged
    # and the first copy kept; a copy that names another patient, study or pixel grid, or holds
    # other pixels in the same encoding, is refused.
    if DeflatedExplicitVRLittleEndian in (str(record.transfer_syntax_uid), str(transfer_syntax)):
        # reading a deflated header means inflating the whole data set in memory: not for a resend
        difference: str | None = "encoding (deflated, not byte-identical)"
    else:
        difference = identity_difference(stored, candidate)
    if difference is None and same_syntax:
        # same encoding, other bytes: the header may be rewritten, the pixels must be the same
        # (a modality that reuses a UID for another image of the series changes only them)
        at_stored = pixel_element_offset(stored, transfer_syntax)
        at_candidate = pixel_element_offset(candidate, transfer_syntax)
        if (at_stored is None or at_candidate is None
                or not same_bytes_from(stored, at_stored, candidate, at_candidate)):
            difference = "Pixel Data"
    if difference is not None:
        raise DuplicateInstanceError(
            f"SOP Instance UID {uid} is already stored with a different {difference}: the stored copy is kept"
        )
    log_event(log, "store.same_object_reencoded", sop_instance_uid=uid,
              stored_syntax=str(record.transfer_syntax_uid), received_syntax=str(transfer_syntax))
    return True


def _commit(
    committer: GroupCommitter, header: Header, pending: PendingFile, *, size: int, transfer_syntax: str,
    calling_aet: str,
) -> bool:
    """Make the file durable (data and directory entry), then commit its row; True if the row
    is new. Raises StoreError/DatabaseError: nothing acknowledged, and a file left without its
    row is replaced by the next copy of the UID."""
    record = receive_record(
        header, pending, size=size, transfer_syntax=transfer_syntax, calling_aet=calling_aet
    )
    ticket = committer.submit(record)
    ticket.wait(committer.timeout)
    return ticket.inserted


def store_received(
    store: InstanceStore,
    committer: GroupCommitter,
    header: Header,
    received: Path,
    *,
    transfer_syntax: str,
    calling_aet: str,
) -> bool:
    """Store a Part 10 file received into the store's incoming folder; True if it was new.

    An identical resend returns False (acknowledge again, no new work); a different data set
    under a stored UID raises DuplicateInstanceError and the received file is left to its
    owner (pynetdicom removes it).
    """
    with store.instance_lock(header.sop_instance_uid):
        if _already_stored(store, committer.repo, header, received, transfer_syntax):
            return False
        try:
            size = received.stat().st_size
        except OSError as exc:
            raise StoreError(f"received file {received} vanished: {exc.strerror or exc}") from exc
        pending = store.adopt(header.sop_instance_uid, received)
        return _commit(
            committer, header, pending, size=size, transfer_syntax=transfer_syntax, calling_aet=calling_aet
        )


def store_durably(
    store: InstanceStore,
    committer: GroupCommitter,
    header: Header,
    parts: tuple,
    *,
    transfer_syntax: str,
    calling_aet: str,
) -> bool:
    """Store a Part 10 file given as byte parts (file meta, data set); True if it was new.

    Same duplicate policy as :func:`store_received`.
    """
    size = sum(len(p) for p in parts)
    with store.instance_lock(header.sop_instance_uid):
        pending = store.begin_write(header.sop_instance_uid, *parts)
        try:
            known = _already_stored(store, committer.repo, header, pending.tmp, transfer_syntax)
        except BaseException:
            pending.abort()
            raise
        if known:
            pending.abort()
            return False
        return _commit(
            committer, header, pending, size=size, transfer_syntax=transfer_syntax, calling_aet=calling_aet
        )


def durable_record(
    pending: PendingFile,
    *,
    sop_instance_uid: str,
    sop_class_uid: str,
    study_instance_uid: str,
    series_instance_uid: str,
    transfer_syntax_uid: str,
    size: int,
    accession_number: str = "",
    calling_aet: str = "",
    derived: bool = False,
) -> InstanceRecord:
    """Make a written file durable, then return the row that may name it: the one way the node
    turns a file into an instance row, for received instances and its own result objects alike.

    :meth:`PendingFile.finish` renames the file into place and fsyncs its data and directory
    (``durability = "fsync"``) before this returns, so whoever commits the row (the group
    committer, or :meth:`Repository.finish_job` for result objects) never names a file that a
    power loss could take away. The row is not committed here.
    """
    pending.finish()
    return InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        transfer_syntax_uid=str(transfer_syntax_uid),
        path=pending.relpath,
        size_bytes=size,
        accession_number=accession_number,
        calling_aet=calling_aet[:16],
        derived=derived,
        received_at=time.time(),
    )


def receive_record(
    header: Header, pending: PendingFile, *, size: int, transfer_syntax: str, calling_aet: str
) -> InstanceRecord:
    """A received instance's file made durable, and its row (:func:`durable_record`)."""
    return durable_record(
        pending,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        transfer_syntax_uid=transfer_syntax,
        size=size,
        accession_number=header.accession_number,
        calling_aet=calling_aet,
    )


def store_result(store: InstanceStore, ds: pydicom.Dataset, *, accession_number: str) -> InstanceRecord:
    """A result object of this node (SEG, SR, SC, KOS) written like a received instance: encoded as
    Part 10, made durable and described by :func:`durable_record` (``derived``). The caller commits
    the row with its job (:meth:`Repository.finish_job`), or removes the file when it cannot."""
    data = encode_part10(ds)
    pending = store.begin_write(str(ds.SOPInstanceUID), data)
    return durable_record(
        pending,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        size=len(data),
        accession_number=accession_number,
        derived=True,
    )
