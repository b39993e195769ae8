"""The delivery outbox (``deliveries``): one row per (result object, destination).

Rows are queued in the transaction that records the result objects (:func:`queue_deliveries`,
called by node.repository.jobs), so a result is never stored without its deliveries; the
delivery loop (node.delivery) reads the due ones and records each attempt here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection, case, select, update

from node.db import DELIVERIES, INSTANCES, DeliveryState
from node.repository.base import RepositoryBase
from node.repository.instances import InstanceRecord, instance_from_row


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


def queue_deliveries(conn: Connection, instance_id: int, destinations: Sequence[str], now: float) -> None:
    """Inside the caller's write transaction: one pending row per destination for ``instance_id``."""
    if not destinations:
        return
    conn.execute(
        DELIVERIES.insert(),
        [
            {
                "instance_id": instance_id,
                "destination": destination,
                "state": DeliveryState.PENDING,
                "attempts": 0,
                "next_attempt_at": 0.0,
                "created_at": now,
            }
            for destination in destinations
        ],
    )


class Outbox(RepositoryBase):
    """Due deliveries and the outcome of each attempt."""

    def due_deliveries(self, limit: int, now: float | None = None) -> list[DueDelivery]:
        """Pending rows whose backoff has passed, oldest first, each with its instance."""
        now = time.time() if now is None else now
        d = DELIVERIES.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    d.id.label("delivery_id"), d.destination, d.attempts.label("delivery_attempts"), INSTANCES
                )
                .join(INSTANCES, INSTANCES.c.id == d.instance_id)
                .where(d.state == DeliveryState.PENDING, d.next_attempt_at <= now)
                .order_by(d.id)
                .limit(limit)
            ).all()
        return [
            DueDelivery(r.delivery_id, r.destination, r.delivery_attempts, instance_from_row(r))
            for r in rows
        ]

    def mark_sent(self, delivery_ids: Sequence[int]) -> None:
        if not delivery_ids:
            return
        now = time.time()
        d = DELIVERIES.c
        with self._write() as conn:
            conn.execute(
                update(DELIVERIES)
                .where(d.id.in_(list(delivery_ids)))
                .values(state=DeliveryState.SENT, sent_at=now, attempts=d.attempts + 1, error=None)
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
        failed at once when the destination refused the object (:class:`DeliveryFault`).
        Returns the new state ("" when the row was no longer pending)."""
        d = DELIVERIES.c
        last = max_attempts if fault is DeliveryFault.TRANSIENT else 0
        with self._write() as conn:
            row = conn.execute(
                update(DELIVERIES)
                .where(d.id == delivery_id, d.state == DeliveryState.PENDING)
                .values(
                    attempts=d.attempts + 1,
                    # .value: a bare enum member in CASE would be bound untyped (no column to take it from)
                    state=case(
                        (d.attempts + 1 >= last, DeliveryState.FAILED.value),
                        else_=DeliveryState.PENDING.value,
                    ),
                    next_attempt_at=next_attempt_at,
                    error=error[:4000],
                )
                .returning(d.state)
            ).first()
        return "" if row is None else str(row.state)

    def resend_failed(self, destination: str | None = None) -> int:
        """``cxr-node resend``: failed deliveries back to pending with a fresh attempt count."""
        d = DELIVERIES.c
        stmt = update(DELIVERIES).where(d.state == DeliveryState.FAILED)
        if destination:
            stmt = stmt.where(d.destination == destination)
        with self._write() as conn:
            result = conn.execute(stmt.values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=0.0))
        return int(result.rowcount)
