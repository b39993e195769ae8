"""Every SQL statement of the node, one module per job, behind one :class:`Repository` object.

- :mod:`~node.repository.engine`: the engine (SQLite WAL and ``BEGIN IMMEDIATE`` writes,
  PostgreSQL ``search_path``) and creating the schema;
- :mod:`~node.repository.instances`: received instances (the listener's group commit);
- :mod:`~node.repository.jobs`: the job queue (schedule, claim with ``FOR UPDATE SKIP LOCKED``,
  renew, finish, fail, release);
- :mod:`~node.repository.outbox`: the delivery outbox;
- :mod:`~node.repository.retention`: finished studies and removing their rows;
- :mod:`~node.repository.status`: the read-only queries of ``status``, the dashboard and ``/metrics``.

The queue behaves the same on SQLite and PostgreSQL; the states are :class:`node.db.JobState`
and :class:`node.db.DeliveryState`.
"""

from __future__ import annotations

from node.db import DeliveryState, JobState
from node.repository.engine import make_engine
from node.repository.instances import InstanceRecord, InstanceRows
from node.repository.jobs import ClaimedJob, JobQueue
from node.repository.outbox import DeliveryFault, DueDelivery, Outbox
from node.repository.retention import RetentionRows
from node.repository.status import StatusReads


class Repository(InstanceRows, JobQueue, Outbox, RetentionRows, StatusReads):
    """The node's database operations; thread-safe (one pooled connection per call).

    Each base class holds one job's SQL; they share the engine and the transactions of
    :class:`node.repository.base.RepositoryBase`.
    """


__all__ = [
    "ClaimedJob",
    "DeliveryFault",
    "DeliveryState",
    "DueDelivery",
    "InstanceRecord",
    "JobState",
    "Repository",
    "make_engine",
]
