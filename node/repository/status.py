"""The read-only queries behind ``cxr-node status``, the dashboard and ``/metrics``: one place for all three.

Each function takes the engine and opens its own read transaction, so the CLI, the HTTP face
(node.http) and a Prometheus scrape see the same numbers from the same SQL. Nothing here writes.
The per-study ``state`` (receiving, analysing, failed, delivering, delivery_failed, done) is
derived from the rows, never stored. :class:`StatusReads` gives the repository its ``status()``
and ``ping()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from node.db import DELIVERIES, INSTANCES, JOBS, DeliveryState, JobState
from node.errors import DatabaseError
from node.repository.base import RepositoryBase

# Every state, as plain strings: the keys of the counts, each present even at zero.
_JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
_DELIVERY_STATES: tuple[str, ...] = tuple(s.value for s in DeliveryState)
# Histogram buckets (seconds) of the job duration and the receive-to-delivered latency.
DURATION_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


@contextmanager
def _read(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database read failed: {exc.__class__.__name__}: {exc}") from exc


def study_state(unscheduled: int, jobs: dict[str, int], deliveries: dict[str, int]) -> str:
    """A study's progress from its counts: receiving, analysing, failed, delivering, delivery_failed, done."""
    if unscheduled:
        return "receiving"
    if jobs.get(JobState.QUEUED) or jobs.get(JobState.RUNNING):
        return "analysing"
    if jobs.get(JobState.FAILED):
        return "failed"
    if deliveries.get(DeliveryState.PENDING):
        return "delivering"
    if deliveries.get(DeliveryState.FAILED):
        return "delivery_failed"
    return "done"


def overview(engine: Engine, max_studies: int = 50, max_errors: int = 10) -> dict[str, Any]:
    """Counts by state, recent errors and per-study progress (``cxr-node status --json``, dashboard)."""
    i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
    with _read(engine) as conn:
        jobs = dict.fromkeys(_JOB_STATES, 0)
        jobs.update({s: n for s, n in conn.execute(select(j.state, func.count()).group_by(j.state))})
        deliveries = dict.fromkeys(_DELIVERY_STATES, 0)
        deliveries.update(
            {s: n for s, n in conn.execute(select(d.state, func.count()).group_by(d.state))}
        )
        received, derived = conn.execute(
            select(func.count().filter(i.derived.is_(False)), func.count().filter(i.derived.is_(True)))
        ).one()
        study_rows = conn.execute(
            select(
                i.study_instance_uid,
                func.max(i.accession_number),
                func.count().filter(i.derived.is_(False)),
                func.count().filter(i.derived.is_(True)),
                func.count().filter(and_(i.derived.is_(False), i.job_id.is_(None))),
                func.max(i.received_at),
            )
            .group_by(i.study_instance_uid)
            .order_by(func.max(i.received_at).desc())
            .limit(max_studies)
        ).all()
        uids = [r[0] for r in study_rows]
        job_states: dict[str, dict[str, int]] = {}
        for uid, state, n in conn.execute(
            select(j.study_instance_uid, j.state, func.count())
            .where(j.study_instance_uid.in_(uids))
            .group_by(j.study_instance_uid, j.state)
        ):
            job_states.setdefault(uid, {})[state] = n
        delivery_states: dict[str, dict[str, int]] = {}
        for uid, state, n in conn.execute(
            select(i.study_instance_uid, d.state, func.count())
            .join(INSTANCES, INSTANCES.c.id == d.instance_id)
            .where(i.study_instance_uid.in_(uids))
            .group_by(i.study_instance_uid, d.state)
        ):
            delivery_states.setdefault(uid, {})[state] = n
        job_errors = conn.execute(
            select(j.id, j.study_instance_uid, j.state, j.attempts, j.error, j.updated_at)
            .where(j.error.is_not(None))
            .order_by(j.updated_at.desc())
            .limit(max_errors)
        ).all()
        delivery_errors = conn.execute(
            select(d.id, d.destination, d.state, d.attempts, d.error, i.sop_instance_uid)
            .join(INSTANCES, INSTANCES.c.id == d.instance_id)
            .where(d.error.is_not(None))
            .order_by(d.id.desc())
            .limit(max_errors)
        ).all()
    studies = []
    for uid, accession, n_received, n_results, n_unscheduled, last in study_rows:
        js = job_states.get(uid, {})
        ds = delivery_states.get(uid, {})
        progress = study_state(n_unscheduled, js, ds)
        studies.append(
            {
                "study_instance_uid": uid,
                "accession_number": accession or "",
                "instances": n_received,
                "results": n_results,
                "unscheduled": n_unscheduled,
                "last_received_at": last,
                "jobs": js,
                "deliveries": ds,
                "state": progress,
            }
        )
    return {
        "jobs": jobs,
        "deliveries": deliveries,
        "instances": int(received),
        "results": int(derived),
        "studies": studies,
        "errors": {
            "jobs": [
                {
                    "job_id": r.id,
                    "study_instance_uid": r.study_instance_uid,
                    "state": r.state,
                    "attempts": r.attempts,
                    "error": r.error,
                    "at": r.updated_at,
                }
                for r in job_errors
            ],
            "deliveries": [
                {
                    "delivery_id": r.id,
                    "destination": r.destination,
                    "state": r.state,
                    "attempts": r.attempts,
                    "error": r.error,
                    "sop_instance_uid": r.sop_instance_uid,
                }
                for r in delivery_errors
            ],
        },
    }


def study_detail(engine: Engine, study_uid: str) -> dict[str, Any] | None:
    """One study: its received images, result objects, jobs and deliveries (the dashboard's study page).

    None when the node holds no instance of ``study_uid``. Only identifiers, counts and states:
    what a result says is read from the stored SR by the caller (node.http.findings).
    """
    i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
    with _read(engine) as conn:
        rows = conn.execute(
            select(i.id, i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, i.transfer_syntax_uid,
                   i.accession_number, i.path, i.size_bytes, i.calling_aet, i.derived, i.received_at,
                   i.job_id)
            .where(i.study_instance_uid == study_uid)
            .order_by(i.received_at, i.id)
        ).all()
        if not rows:
            return None
        jobs = conn.execute(
            select(j.id, j.state, j.attempts, j.error, j.created_at, j.finished_at)
            .where(j.study_instance_uid == study_uid)
            .order_by(j.id)
        ).all()
        deliveries = conn.execute(
            select(d.id, d.destination, d.state, d.attempts, d.error, d.sent_at, i.sop_instance_uid)
            .join(INSTANCES, i.id == d.instance_id)
            .where(i.study_instance_uid == study_uid)
            .order_by(d.id)
        ).all()
    instances = [dict(r._mapping) for r in rows]
    received = [r for r in instances if not r["derived"]]
    unscheduled = sum(1 for r in received if r["job_id"] is None)
    job_counts = dict(Counter(str(r.state) for r in jobs))
    delivery_counts = dict(Counter(str(r.state) for r in deliveries))
    return {
        "study_instance_uid": study_uid,
        "state": study_state(unscheduled, job_counts, delivery_counts),
        "last_received_at": max((r["received_at"] for r in received), default=None),
        "accession_number": max((r["accession_number"] or "" for r in instances), default=""),
        "sources": [r for r in instances if not r["derived"]],
        "results": [r for r in instances if r["derived"]],
        "jobs": [dict(r._mapping) for r in jobs],
        "deliveries": [dict(r._mapping) for r in deliveries],
    }


def find_instance(engine: Engine, sop_instance_uid: str) -> dict[str, Any] | None:
    """The row of one stored instance (received or result), or None."""
    with _read(engine) as conn:
        row = conn.execute(select(INSTANCES).where(INSTANCES.c.sop_instance_uid == sop_instance_uid)).first()
    return None if row is None else dict(row._mapping)


def failures(engine: Engine, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
    """Jobs and deliveries in the final ``failed`` state, newest first, with their reasons."""
    i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
    with _read(engine) as conn:
        jobs = conn.execute(
            select(j.id.label("job_id"), j.study_instance_uid, j.accession_number, j.attempts, j.error,
                   j.updated_at)
            .where(j.state == JobState.FAILED)
            .order_by(j.updated_at.desc())
            .limit(limit)
        ).all()
        deliveries = conn.execute(
            select(d.id.label("delivery_id"), d.destination, d.attempts, d.error, i.sop_instance_uid,
                   i.sop_class_uid, i.study_instance_uid, i.accession_number)
            .join(INSTANCES, i.id == d.instance_id)
            .where(d.state == DeliveryState.FAILED)
            .order_by(d.id.desc())
            .limit(limit)
        ).all()
    return {"jobs": [dict(r._mapping) for r in jobs], "deliveries": [dict(r._mapping) for r in deliveries]}


def _bucket_counts(
    conn: Connection, value: Any, where: Sequence[Any], buckets: Sequence[float]
) -> dict[str, Any]:
    """Cumulative counts of ``value`` <= each bucket, the count and the sum, in ONE aggregate query."""
    columns = [func.sum(case((value <= b, 1), else_=0)) for b in buckets]
    row = conn.execute(select(func.count(), func.sum(value), *columns).where(*where)).one()
    count, total, *cumulative = row
    return {"count": int(count or 0), "sum": float(total or 0.0),
            "buckets": [(float(b), int(c or 0)) for b, c in zip(buckets, cumulative, strict=True)]}


def metric_counts(engine: Engine, buckets: Sequence[float] = DURATION_BUCKETS) -> dict[str, Any]:
    """What ``/metrics`` exposes from the database, read at scrape time (so every process agrees).

    - instances received (``derived = False``) and result objects, by calling AE title;
    - jobs by state; deliveries by (destination, state);
    - job duration: ``finished_at - created_at`` of done jobs (queued + analysed, seconds);
    - receive-to-delivered latency: a sent delivery's ``sent_at`` minus the newest received
      instance of the job that made its object (the moment the study was complete at the node).
    Rows removed by retention leave these counts: they describe what the node holds.
    """
    i, j, d = INSTANCES.c, JOBS.c, DELIVERIES.c
    with _read(engine) as conn:
        received = [(str(aet or ""), bool(derived), int(n)) for aet, derived, n in conn.execute(
            select(i.calling_aet, i.derived, func.count()).group_by(i.calling_aet, i.derived))]
        jobs = dict.fromkeys(_JOB_STATES, 0)
        by_state = conn.execute(select(j.state, func.count()).group_by(j.state))
        jobs.update({str(s): int(n) for s, n in by_state})
        deliveries = [(str(dest), str(state), int(n)) for dest, state, n in conn.execute(
            select(d.destination, d.state, func.count()).group_by(d.destination, d.state))]
        job_duration = _bucket_counts(conn, j.finished_at - j.created_at,
                                      [j.state == JobState.DONE, j.finished_at.is_not(None)], buckets)
        source = INSTANCES.alias("source")
        result = INSTANCES.alias("result")
        complete_at = (select(func.max(source.c.received_at))
                       .where(source.c.job_id == result.c.job_id, source.c.derived.is_(False))
                       .scalar_subquery())
        latency_rows = (select((d.sent_at - complete_at).label("latency"))
                        .select_from(DELIVERIES.join(result, result.c.id == d.instance_id))
                        .where(d.state == DeliveryState.SENT, d.sent_at.is_not(None))
                        .subquery())
        latency = _bucket_counts(conn, latency_rows.c.latency, [latency_rows.c.latency.is_not(None)], buckets)
    return {"received": received, "jobs": jobs, "deliveries": deliveries,
            "job_duration": job_duration, "delivery_latency": latency}


class StatusReads(RepositoryBase):
    """The repository's own status reads (``cxr-node status`` and the readiness probe)."""

    def status(self, max_studies: int = 50, max_errors: int = 10) -> dict[str, Any]:
        """Counts by state, recent errors and per-study progress: :func:`overview`."""
        return overview(self.engine, max_studies=max_studies, max_errors=max_errors)

    def ping(self) -> None:
        """One round trip to the database (raises DatabaseError when it is unreachable)."""
        with self._read() as conn:
            conn.execute(text("SELECT 1"))
