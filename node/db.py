"""Database schema (SQLAlchemy 2.0 ORM): instances, jobs, deliveries.

The same schema runs on SQLite (one machine) and PostgreSQL (several machines sharing the
queue). All SQL that reads or writes these tables lives in :mod:`node.repository`. The states
are :class:`JobState` and :class:`DeliveryState`, stored as their string values (a plain
``VARCHAR``, so a new state never needs a schema migration).

- ``instances``: every object in the store, received (``derived = False``) or produced by the
  worker (``derived = True``). ``job_id`` is NULL until the scheduler puts a received
  instance into a job; results point to the job that made them.
- ``jobs``: one row per unit of analysis work (the instances of one study that arrived before
  the study went quiet). States: queued -> running -> done | failed; a running job whose
  lease expired is claimable again.
- ``deliveries``: the persistent outbox, one row per (result instance, destination).
  States: pending -> sent | failed; ``next_attempt_at`` carries the backoff.
- ``analysis_processes``: one row per running ``serve`` / ``cxr-node worker`` process with
  analysis threads: the models it loaded (names and versions), refreshed by a heartbeat and
  removed on a clean stop (node.worker_registry), so ``cxr-node status`` shows what analyses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobState(StrEnum):
    """``jobs.state``: queued -> running -> done | failed (a running job whose lease expired is claimable)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """``deliveries.state``: pending -> sent | failed."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # final until ``cxr-node resend`` puts it back to pending


class Base(DeclarativeBase):
    pass


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    path: Mapped[str] = mapped_column(Text)  # relative to the store root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    derived: Mapped[bool] = mapped_column(Boolean, default=False)
    # Seconds since the epoch (float): cheap to compare, same on both databases.
    received_at: Mapped[float] = mapped_column(Float)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)

    __table_args__ = (
        Index("ix_instances_unscheduled", "derived", "job_id", "study_instance_uid"),
        Index("ix_instances_job", "job_id"),
        Index("ix_instances_study", "study_instance_uid"),
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)  # retry backoff
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_jobs_state", "state", "not_before"),
        Index("ix_jobs_study", "study_instance_uid"),
    )


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("instance_id", "destination", name="uq_delivery_instance_destination"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )


class AnalysisProcess(Base):
    __tablename__ = "analysis_processes"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid
    role: Mapped[str] = mapped_column(String(16))  # "serve" or "worker"
    threads: Mapped[int] = mapped_column(Integer, default=1)
    device: Mapped[str] = mapped_column(String(32), default="")
    models_dir: Mapped[str] = mapped_column(Text, default="")
    models: Mapped[str] = mapped_column(Text, default="[]")  # JSON: [{"task", "name", "version"}]
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)


# The tables as Core ``Table`` objects (``Model.__table__`` is typed as a bare FromClause), for the
# statements in node.repository.
INSTANCES: Table = Base.metadata.tables["instances"]
JOBS: Table = Base.metadata.tables["jobs"]
DELIVERIES: Table = Base.metadata.tables["deliveries"]


def utc_from_epoch(seconds: float | None) -> datetime | None:
    """For display only: epoch seconds -> aware UTC datetime."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


__all__ = [
    "AnalysisProcess",
    "Base",
    "DELIVERIES",
    "Delivery",
    "DeliveryState",
    "INSTANCES",
    "Instance",
    "JOBS",
    "Job",
    "JobState",
    "utc_from_epoch",
    "DateTime",
]
