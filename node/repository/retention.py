"""Retention's SQL: which studies are finished, and removing one study's rows.

The policy (how old, how many per pass, removing the files) is node.retention; this module only
decides, inside a transaction, whether a study may go and deletes its rows.
"""

from __future__ import annotations

from sqlalchemy import Select, and_, case, func, select

from node.db import DELIVERIES, INSTANCES, JOBS, DeliveryState, JobState
from node.repository.base import RepositoryBase


def finished_studies(cutoff: float) -> Select[tuple[str]]:
    """SELECT of the studies retention may remove: nothing open, newest instance older than ``cutoff``.

    Open: an instance without a job (the study is not complete yet), a queued or running job, a
    pending delivery. Failed jobs and failed deliveries are final states (``cxr-node resend`` puts a
    failed delivery back while the study is still here).
    """
    i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
    open_jobs = select(j.study_instance_uid).where(j.state.in_((JobState.QUEUED, JobState.RUNNING)))
    pending = (select(i.study_instance_uid)
               .join(DELIVERIES, d.instance_id == i.id).where(d.state == DeliveryState.PENDING))
    unscheduled = func.sum(case((and_(i.derived.is_(False), i.job_id.is_(None)), 1), else_=0))
    return (
        select(i.study_instance_uid)
        .where(i.study_instance_uid.not_in(open_jobs), i.study_instance_uid.not_in(pending))
        .group_by(i.study_instance_uid)
        .having(and_(func.max(i.received_at) < cutoff, unscheduled == 0))
    )


class RetentionRows(RepositoryBase):
    """List and delete finished studies."""

    def retention_candidates(self, cutoff: float, limit: int) -> list[str]:
        """Finished studies whose newest instance (received or result) is older than ``cutoff``, oldest first.

        Only finished ones, so that a study still waiting (a destination down for days) does not hide the
        ones after it; :meth:`purge_study` checks again in its own transaction.
        """
        with self._read() as conn:
            rows = conn.execute(
                finished_studies(cutoff).order_by(func.max(INSTANCES.c.received_at)).limit(limit)
            ).all()
        return [str(r.study_instance_uid) for r in rows]

    def purge_study(
        self, study_uid: str, cutoff: float, *, dry_run: bool = False
    ) -> list[tuple[str, int]] | None:
        """Delete a finished study's rows; returns its instances' (store path, size), or None when it is kept.

        Kept (None) unless it is one of :func:`finished_studies` inside this transaction (something may
        have arrived or been re-queued since it was listed). The caller removes the files after this
        commit: a crash in between leaves files without rows, never rows without files.
        """
        i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
        with self._write() as conn:
            finished = finished_studies(cutoff).where(i.study_instance_uid == study_uid)
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
