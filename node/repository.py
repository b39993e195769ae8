"""Every SQL statement of the node: instances, the job queue and the delivery outbox.

One module so that the queue semantics can be read (and reviewed) in one place and behave the
same on SQLite and PostgreSQL:

- Writes on SQLite run in ``BEGIN IMMEDIATE`` transactions: the write lock is taken up front,
  so a read-then-write transaction never fails half-way on a lock upgrade; ``busy_timeout``
  makes concurrent writers wait instead of failing.
- A job is claimed by ONE statement, ``UPDATE jobs ... WHERE id = (SELECT ... FOR UPDATE SKIP
  LOCKED) RETURNING ...``: on PostgreSQL the row lock with SKIP LOCKED hands each job to one
  worker without blocking the others; SQLite ignores FOR UPDATE but runs the statement under
  its single write lock, which gives the same guarantee.
- Times are epoch seconds from the caller's clock (machines sharing a PostgreSQL queue must
  run NTP; leases are minutes, so a second of skew does not matter).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, create_engine, event, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from node import status_queries
from node.db import Base, Delivery, Instance, Job
from node.errors import DatabaseError

log = logging.getLogger(__name__)

INSTANCES = Instance.__table__
JOBS = Job.__table__
DELIVERIES = Delivery.__table__
# Any constant works: it only has to be the same in every process that creates the schema.
_SCHEMA_LOCK_KEY = 0x63787231


def _enable_wal(cur: Any, *, timeout: float) -> None:
    """Switch a SQLite database to WAL, waiting while another process holds it.

    Switching the journal mode needs an exclusive lock, and SQLite answers "database is locked"
    at once instead of calling the busy handler. This happens when several processes (``serve``
    and ``worker``) open a new database at the same moment, so the switch is retried with a
    short backoff. Once a database is in WAL mode the setting persists and the PRAGMA is a no-op.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def make_engine(url: str, *, durability: str = "fsync", schema: str = "") -> Engine:
    """Create the engine with the per-connection settings the node relies on.

    SQLite: WAL (readers never block the writer), ``synchronous=FULL`` when durability is
    "fsync" (a committed row survives power loss) or NORMAL for "os" (survives a process kill),
    foreign keys on, a 30 s busy timeout. PostgreSQL: ``search_path`` set to ``schema`` when
    given, so that test runs (and several nodes) can share one database without colliding.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sync = "FULL" if durability == "fsync" else "NORMAL"

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_begin)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _enable_wal(cur, timeout=30.0)
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("cxr_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    if schema:
        if not schema.replace("_", "").isalnum():
            raise DatabaseError(f"database_schema must be letters, digits and '_', got {schema!r}")

        @event.listens_for(engine, "connect")
        def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # IF NOT EXISTS is not atomic: two processes connecting at once both try to create it.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()

    return engine


_INSTANCE_COLUMNS = [c.name for c in INSTANCES.columns if c.name != "id"]
_SQLITE_INSERT_INSTANCE = (
    f"INSERT INTO instances ({', '.join(_INSTANCE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _INSTANCE_COLUMNS)}) "
    "ON CONFLICT (sop_instance_uid) DO NOTHING"
)


@dataclass(frozen=True)
class InstanceRecord:
    """One row of ``instances`` as the store and the worker see it."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    accession_number: str = ""
    calling_aet: str = ""
    derived: bool = False
    received_at: float = 0.0
    id: int | None = None
    job_id: int | None = None

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("id",)}
        out["received_at"] = self.received_at or time.time()
        return out


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_instance_uid: str
    accession_number: str
    attempts: int
    lease_owner: str


class DeliveryState(StrEnum):
    """States of an outbox row (``deliveries.state``): pending -> sent | failed."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # final until ``cxr-node resend`` puts it back to pending


class DeliveryFault(StrEnum):
    """Why a delivery attempt failed, which decides what happens next.

    TRANSIENT: the destination may take it later (no connection, association rejected or aborted,
    timeout, C-STORE 0xA7xx "out of resources", any other failure status): retried with backoff
    until ``[delivery].max_attempts``. REFUSED: the destination accepted no presentation context
    for the object's SOP Class in any syntax the node can send (PS3.8 9.3.3.2 result 3 or 4) or
    answered 0x0122 "SOP Class not supported" (PS3.4 B.2.3): no retry can succeed, so the row is
    failed at once; ``cxr-node resend`` re-queues it once the destination is configured to take it.
    """

    TRANSIENT = "transient"
    REFUSED = "refused"


@dataclass(frozen=True)
class DueDelivery:
    id: int
    destination: str
    attempts: int
    instance: InstanceRecord


def _instance_from_row(row: Any) -> InstanceRecord:
    return InstanceRecord(
        id=row.id,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        path=row.path,
        size_bytes=row.size_bytes,
        accession_number=row.accession_number,
        calling_aet=row.calling_aet,
        derived=row.derived,
        received_at=row.received_at,
        job_id=row.job_id,
    )


class _LeaseLost(Exception):
    """Internal: rolls back finish_job when the job is no longer ours."""


class Repository:
    """The node's database operations; thread-safe (one pooled connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._local = threading.local()

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(cxr_write=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database write failed: {exc.__class__.__name__}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database read failed: {exc.__class__.__name__}: {exc}") from exc

    def _insert(self, table: Any) -> Any:
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table)

    def create_schema(self) -> None:
        """Create missing tables; safe when ``serve`` and ``worker`` processes start together.

        The check-then-create runs in one write transaction: ``BEGIN IMMEDIATE`` on SQLite (a
        read transaction upgraded to a write fails at once with "database is locked", whatever
        the busy timeout) and a transaction-scoped advisory lock on PostgreSQL (two concurrent
        CREATE TABLEs of the same name collide on the catalogue's unique index).
        """
        try:
            with self.engine.connect().execution_options(cxr_write=True) as conn, conn.begin():
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                Base.metadata.create_all(conn)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot create the schema on {self.engine.url!r}: {exc}") from exc

    def drop_schema(self) -> None:
        """Tests only: drop every table of the node."""
        Base.metadata.drop_all(self.engine)

    # -- receive path -----------------------------------------------------------------------
    def record_instances(self, records: Sequence[InstanceRecord]) -> set[str]:
        """Insert received instances in ONE transaction (the group commit of the SCP).

        A SOP Instance UID that is already known is ignored (ON CONFLICT DO NOTHING): a resent
        instance is acknowledged again without creating new work (PS3.4 B.2.3 lets an SCP
        treat a duplicate as success). Returns the UIDs that were new.
        """
        if not records:
            return set()
        if self.is_sqlite:
            return self._record_instances_sqlite(records)
        stmt = (
            self._insert(INSTANCES)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(INSTANCES.c.sop_instance_uid)
        )
        with self._write() as conn:
            return set(conn.execute(stmt, [r.row() for r in records]).scalars())

    def _record_instances_sqlite(self, records: Sequence[InstanceRecord]) -> set[str]:
        """The same insert on the raw sqlite3 connection that the calling thread keeps.

        The receive path's hot statement: through the ORM layer's pool checkout, compilation
        and result handling it costs ~0.15 ms more per commit than the driver itself (0.44
        vs 0.29 ms measured), Python time that competes for the GIL with the association
        threads. Same SQL, same transaction semantics (BEGIN IMMEDIATE ... COMMIT, WAL,
        ``synchronous`` from the engine's connect hook).
        """
        conn = self._thread_raw_connection()
        new: set[str] = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    cur = conn.execute(_SQLITE_INSERT_INSTANCE, record.row())
                    if cur.rowcount == 1:
                        new.add(record.sop_instance_uid)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise DatabaseError(f"database write failed: {exc.__class__.__name__}: {exc}") from exc
        return new

    def _thread_raw_connection(self) -> Any:
        """A DBAPI connection checked out of the engine's pool for good by this thread."""
        fairy = getattr(self._local, "fairy", None)
        if fairy is None:  # held by this thread until it ends, so the checkout stays alive
            fairy = self._local.fairy = self.engine.raw_connection()  # runs the connect hook (PRAGMAs)
        return fairy.driver_connection

    def forget_instance(self, sop_instance_uid: str) -> None:
        """Undo a just-recorded instance whose file could not be written (never acknowledged)."""
        with self._write() as conn:
            conn.execute(
                INSTANCES.delete().where(
                    INSTANCES.c.sop_instance_uid == sop_instance_uid, INSTANCES.c.job_id.is_(None)
                )
            )

    def instance_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(INSTANCES)).scalar_one())

    def find_instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        with self._read() as conn:
            row = conn.execute(
                select(INSTANCES).where(INSTANCES.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return None if row is None else _instance_from_row(row)

    # -- scheduler --------------------------------------------------------------------------
    def schedule_stable_studies(self, now: float, stable_seconds: float) -> list[int]:
        """Turn every study that has been quiet for ``stable_seconds`` into a job.

        Only received instances without a job are considered, so instances that arrive after
        their study's job was created form a new job of their own: none is dropped.
        """
        cutoff = now - stable_seconds
        created: list[int] = []
        i = INSTANCES.c
        with self._write() as conn:
            studies = conn.execute(
                select(i.study_instance_uid, func.max(i.accession_number))
                .where(i.derived.is_(False), i.job_id.is_(None))
                .group_by(i.study_instance_uid)
                .having(func.max(i.received_at) <= cutoff)
            ).all()
            for study_uid, accession in studies:
                job_id = conn.execute(
                    self._insert(JOBS)
                    .values(
                        study_instance_uid=study_uid,
                        accession_number=accession or "",
                        state="queued",
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                        not_before=0.0,
                    )
                    .returning(JOBS.c.id)
                ).scalar_one()
                conn.execute(
                    update(INSTANCES)
                    .where(i.study_instance_uid == study_uid, i.derived.is_(False), i.job_id.is_(None))
                    .values(job_id=job_id)
                )
                created.append(job_id)
        return created

    # -- jobs -------------------------------------------------------------------------------
    def claim_job(
        self, owner: str, lease_seconds: float, max_attempts: int, now: float | None = None
    ) -> ClaimedJob | None:
        """Lease the oldest claimable job to ``owner``; None when there is none.

        Claimable: queued and past its retry delay, or running with an expired lease (its
        worker died). A job whose lease expired after its last allowed attempt is marked
        failed instead, so a job that kills its worker cannot loop forever.
        """
        now = time.time() if now is None else now
        j = JOBS.c
        with self._write() as conn:
            conn.execute(
                update(JOBS)
                .where(j.state == "running", j.lease_expires_at < now, j.attempts >= max_attempts)
                .values(
                    state="failed",
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                    finished_at=now,
                    error=f"worker lost its lease {max_attempts} times (killed or hung)",
                )
            )
            pick = (
                select(j.id)
                .where(
                    or_(
                        and_(j.state == "queued", j.not_before <= now),
                        and_(j.state == "running", j.lease_expires_at < now),
                    )
                )
                .order_by(j.id)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            row = conn.execute(
                update(JOBS)
                .where(j.id == pick)
                .values(
                    state="running",
                    attempts=j.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    updated_at=now,
                )
                .returning(j.id, j.study_instance_uid, j.accession_number, j.attempts)
            ).first()
        if row is None:
            return None
        return ClaimedJob(row.id, row.study_instance_uid, row.accession_number, row.attempts, owner)

    def renew_lease(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when the job is no longer ours (lease lost to another worker)."""
        now = time.time()
        with self._write() as conn:
            result = conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.lease_owner == owner, JOBS.c.state == "running")
                .values(lease_expires_at=now + lease_seconds, updated_at=now)
            )
        return result.rowcount == 1

    def job_instances(self, job_id: int) -> list[InstanceRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(INSTANCES)
                .where(INSTANCES.c.job_id == job_id, INSTANCES.c.derived.is_(False))
                .order_by(INSTANCES.c.id)
            ).all()
        return [_instance_from_row(r) for r in rows]

    def finish_job(
        self,
        job_id: int,
        owner: str,
        results: Sequence[InstanceRecord],
        destinations: Sequence[str],
        note: str = "",
    ) -> bool:
        """Record the job's result objects, their outbox rows and the job as done, atomically.

        Returns False (and writes nothing) when the lease was lost meanwhile: the worker that
        now holds the job will record its own results, so none are duplicated.
        """
        now = time.time()
        try:
            return self._finish_job(job_id, owner, results, destinations, now, note)
        except _LeaseLost:
            return False

    def _finish_job(
        self,
        job_id: int,
        owner: str,
        results: Sequence[InstanceRecord],
        destinations: Sequence[str],
        now: float,
        note: str,
    ) -> bool:
        with self._write() as conn:
            done = conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.lease_owner == owner, JOBS.c.state == "running")
                .values(
                    state="done",
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                    finished_at=now,
                    error=note[:4000] or None,
                )
            )
            if done.rowcount != 1:
                raise _LeaseLost
            for record in results:
                row = record.row() | {"derived": True, "job_id": job_id, "received_at": now}
                instance_id = conn.execute(
                    self._insert(INSTANCES).values(**row).returning(INSTANCES.c.id)
                ).scalar_one()
                if destinations:
                    conn.execute(
                        self._insert(DELIVERIES),
                        [
                            {
                                "instance_id": instance_id,
                                "destination": d,
                                "state": DeliveryState.PENDING.value,
                                "attempts": 0,
                                "next_attempt_at": 0.0,
                                "created_at": now,
                            }
                            for d in destinations
                        ],
                    )
        return True

    def fail_job(self, job_id: int, owner: str, error: str, max_attempts: int, retry_delay: float) -> str:
        """An attempt failed: queue the job again after ``retry_delay`` or, after the last
        attempt, mark it failed with ``error``. Returns the new state ("" if not ours)."""
        now = time.time()
        j = JOBS.c
        with self._write() as conn:
            row = conn.execute(
                update(JOBS)
                .where(j.id == job_id, j.lease_owner == owner, j.state == "running")
                .values(
                    state=case((j.attempts >= max_attempts, "failed"), else_="queued"),
                    finished_at=case((j.attempts >= max_attempts, now), else_=None),
                    not_before=now + retry_delay,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                    error=error[:4000],
                )
                .returning(j.state)
            ).first()
        return "" if row is None else str(row.state)

    def release_job(self, job_id: int, owner: str) -> bool:
        """Give a claimed job back untouched (shutdown): queued again, the attempt not counted."""
        now = time.time()
        j = JOBS.c
        with self._write() as conn:
            result = conn.execute(
                update(JOBS)
                .where(j.id == job_id, j.lease_owner == owner, j.state == "running")
                .values(
                    state="queued",
                    attempts=j.attempts - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
        return result.rowcount == 1

    # -- deliveries -------------------------------------------------------------------------
    def due_deliveries(self, limit: int, now: float | None = None) -> list[DueDelivery]:
        now = time.time() if now is None else now
        d = DELIVERIES.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    d.id.label("delivery_id"), d.destination, d.attempts.label("delivery_attempts"), INSTANCES
                )
                .join(INSTANCES, INSTANCES.c.id == d.instance_id)
                .where(d.state == DeliveryState.PENDING.value, d.next_attempt_at <= now)
                .order_by(d.id)
                .limit(limit)
            ).all()
        return [
            DueDelivery(r.delivery_id, r.destination, r.delivery_attempts, _instance_from_row(r))
            for r in rows
        ]

    def mark_sent(self, delivery_ids: Sequence[int]) -> None:
        if not delivery_ids:
            return
        now = time.time()
        with self._write() as conn:
            conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id.in_(list(delivery_ids)))
                .values(state=DeliveryState.SENT.value, sent_at=now, attempts=DELIVERIES.c.attempts + 1,
                        error=None)
            )

    def mark_attempt_failed(
        self,
        delivery_id: int,
        error: str,
        max_attempts: int,
        next_attempt_at: float,
        fault: DeliveryFault = DeliveryFault.TRANSIENT,
    ) -> str:
        """Count a failed attempt: pending with a later ``next_attempt_at``, or failed after the last;
        failed at once when the destination refused the object (:class:`DeliveryFault`)."""
        d = DELIVERIES.c
        last = max_attempts if fault is DeliveryFault.TRANSIENT else 0
        with self._write() as conn:
            row = conn.execute(
                update(DELIVERIES)
                .where(d.id == delivery_id, d.state == DeliveryState.PENDING.value)
                .values(
                    attempts=d.attempts + 1,
                    state=case((d.attempts + 1 >= last, DeliveryState.FAILED.value),
                               else_=DeliveryState.PENDING.value),
                    next_attempt_at=next_attempt_at,
                    error=error[:4000],
                )
                .returning(d.state)
            ).first()
        return "" if row is None else str(row.state)

    def resend_failed(self, destination: str | None = None) -> int:
        """``cxr-node resend``: failed deliveries back to pending with a fresh attempt count."""
        d = DELIVERIES.c
        stmt = update(DELIVERIES).where(d.state == DeliveryState.FAILED.value)
        if destination:
            stmt = stmt.where(d.destination == destination)
        with self._write() as conn:
            result = conn.execute(
                stmt.values(state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=0.0))
        return int(result.rowcount)

    # -- retention --------------------------------------------------------------------------
    @staticmethod
    def _finished_studies(cutoff: float) -> Any:
        """SELECT of the studies retention may remove: nothing open, newest instance older than ``cutoff``.

        Open: an instance without a job (the study is not complete yet), a queued or running job, a
        pending delivery. Failed jobs and failed deliveries are final states (``cxr-node resend`` puts a
        failed delivery back while the study is still here).
        """
        i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
        open_jobs = select(j.study_instance_uid).where(j.state.in_(("queued", "running")))
        pending = (select(INSTANCES.c.study_instance_uid)
                   .join(DELIVERIES, d.instance_id == i.id).where(d.state == "pending"))
        unscheduled = func.sum(case((and_(i.derived.is_(False), i.job_id.is_(None)), 1), else_=0))
        return (
            select(i.study_instance_uid)
            .where(i.study_instance_uid.not_in(open_jobs), i.study_instance_uid.not_in(pending))
            .group_by(i.study_instance_uid)
            .having(and_(func.max(i.received_at) < cutoff, unscheduled == 0))
        )

    def retention_candidates(self, cutoff: float, limit: int) -> list[str]:
        """Finished studies whose newest instance (received or result) is older than ``cutoff``, oldest first.

        Only finished ones, so that a study still waiting (a destination down for days) does not hide the
        ones after it; :meth:`purge_study` checks again in its own transaction.
        """
        with self._read() as conn:
            rows = conn.execute(
                self._finished_studies(cutoff).order_by(func.max(INSTANCES.c.received_at)).limit(limit)
            ).all()
        return [str(r.study_instance_uid) for r in rows]

    def purge_study(
        self, study_uid: str, cutoff: float, *, dry_run: bool = False
    ) -> list[tuple[str, int]] | None:
        """Delete a finished study's rows; returns its instances' (store path, size), or None when it is kept.

        Kept (None) unless it is one of :meth:`_finished_studies` inside this transaction (something may
        have arrived or been re-queued since it was listed). The caller removes the files after this
        commit: a crash in between leaves files without rows, never rows without files.
        """
        i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
        with self._write() as conn:
            finished = self._finished_studies(cutoff).where(i.study_instance_uid == study_uid)
            if conn.execute(finished).first() is None:
                return None
            rows = conn.execute(
                select(i.id, i.path, i.size_bytes, i.job_id).where(i.study_instance_uid == study_uid)
            ).all()
            ids = [r.id for r in rows]
            if not dry_run:
                job_ids = {r.job_id for r in rows if r.job_id is not None}
                conn.execute(DELIVERIES.delete().where(d.instance_id.in_(ids)))
                conn.execute(INSTANCES.delete().where(i.id.in_(ids)))
                if job_ids:
                    conn.execute(JOBS.delete().where(j.id.in_(job_ids)))
        return [(str(r.path), int(r.size_bytes)) for r in rows]

    # -- status -----------------------------------------------------------------------------
    def status(self, max_studies: int = 50, max_errors: int = 10) -> dict[str, Any]:
        """Counts by state, recent errors and per-study progress: :func:`node.status_queries.overview`."""
        return status_queries.overview(self.engine, max_studies=max_studies, max_errors=max_errors)

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))
