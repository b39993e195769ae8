"""The job queue (``jobs``): studies become jobs, workers claim, renew, finish, fail or release them.

A job is claimed by ONE statement, ``UPDATE jobs ... WHERE id = (SELECT ... FOR UPDATE SKIP
LOCKED) RETURNING ...``: on PostgreSQL the row lock with SKIP LOCKED hands each job to one worker
without blocking the others; SQLite ignores FOR UPDATE but runs the statement under its single
write lock (``BEGIN IMMEDIATE``), which gives the same guarantee. Every later change of a job
checks that the caller still holds its lease, so a worker whose lease expired cannot overwrite
the work of the worker that took the job over.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, case, func, or_, select, update

from node.db import INSTANCES, JOBS, JobState
from node.repository.base import RepositoryBase
from node.repository.instances import InstanceRecord, instance_from_row
from node.repository.outbox import queue_deliveries


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_instance_uid: str
    accession_number: str
    attempts: int
    lease_owner: str


class _LeaseLost(Exception):
    """Internal: rolls back finish_job when the job is no longer ours."""


class JobQueue(RepositoryBase):
    """Scheduling, claiming and ending jobs."""

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
                        state=JobState.QUEUED,
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
                .where(j.state == JobState.RUNNING, j.lease_expires_at < now, j.attempts >= max_attempts)
                .values(
                    state=JobState.FAILED,
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
                        and_(j.state == JobState.QUEUED, j.not_before <= now),
                        and_(j.state == JobState.RUNNING, j.lease_expires_at < now),
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
                    state=JobState.RUNNING,
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
        j = JOBS.c
        with self._write() as conn:
            result = conn.execute(
                update(JOBS)
                .where(j.id == job_id, j.lease_owner == owner, j.state == JobState.RUNNING)
                .values(lease_expires_at=now + lease_seconds, updated_at=now)
            )
        return result.rowcount == 1

    def job_instances(self, job_id: int) -> list[InstanceRecord]:
        """The received instances of a job, in the order they were recorded."""
        with self._read() as conn:
            rows = conn.execute(
                select(INSTANCES)
                .where(INSTANCES.c.job_id == job_id, INSTANCES.c.derived.is_(False))
                .order_by(INSTANCES.c.id)
            ).all()
        return [instance_from_row(r) for r in rows]

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
            with self._write() as conn:
                self._finish_job(conn, job_id, owner, results, destinations, now, note)
        except _LeaseLost:
            return False
        return True

    def _finish_job(
        self,
        conn: Connection,
        job_id: int,
        owner: str,
        results: Sequence[InstanceRecord],
        destinations: Sequence[str],
        now: float,
        note: str,
    ) -> None:
        j = JOBS.c
        done = conn.execute(
            update(JOBS)
            .where(j.id == job_id, j.lease_owner == owner, j.state == JobState.RUNNING)
            .values(
                state=JobState.DONE,
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
            queue_deliveries(conn, instance_id, destinations, now)

    def fail_job(self, job_id: int, owner: str, error: str, max_attempts: int, retry_delay: float) -> str:
        """An attempt failed: queue the job again after ``retry_delay`` or, after the last
        attempt, mark it failed with ``error``. Returns the new state ("" if not ours)."""
        now = time.time()
        j = JOBS.c
        last = j.attempts >= max_attempts
        with self._write() as conn:
            row = conn.execute(
                update(JOBS)
                .where(j.id == job_id, j.lease_owner == owner, j.state == JobState.RUNNING)
                .values(
                    # .value: a bare enum member in CASE would be bound untyped (no column to take it from)
                    state=case((last, JobState.FAILED.value), else_=JobState.QUEUED.value),
                    finished_at=case((last, now), else_=None),
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
                .where(j.id == job_id, j.lease_owner == owner, j.state == JobState.RUNNING)
                .values(
                    state=JobState.QUEUED,
                    attempts=j.attempts - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
        return result.rowcount == 1
