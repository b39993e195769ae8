"""Delivery: the persistent outbox drained by C-STORE SCU, with bounded exponential backoff.

Every result object has one ``deliveries`` row per destination, written in the transaction
that finished its job, so a crash never loses a pending delivery: after a restart the loop
picks up every pending row. A row is marked sent only after the destination answered with a
success or warning status (PS3.4 B.2.3: 0x0000, 0xB000, 0xB006, 0xB007 mean the instance was
stored); if the node dies between the send and that mark, the instance is sent again, which a
PACS treats as the same SOP Instance (at-least-once delivery).

Each association proposes only the SOP classes being sent, each with the one transfer syntax
the stored file is encoded in (files are sent as stored, never transcoded), at most 128
presentation contexts per association (PS3.8 9.3.2.2: context ids are odd numbers 1-255).
Destination types live in :data:`SENDERS` so that another transport (e.g. DICOMweb STOW-RS)
can be added beside C-STORE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from pynetdicom import AE, _config

from node.config import Destination, NodeConfig
from node.errors import DatabaseError, DeliveryError
from node.logs import log_event
from node.repository import DueDelivery, Repository
from node.store import InstanceStore

log = logging.getLogger("node.delivery")

# PS3.4 B.2.3 Table B.2-1: success and the warnings (coercion, elements discarded, data set
# does not match SOP class) all mean the SCP stored the instance.
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128

# Send stored files as their bytes (read in chunks after the file meta), never decoded and
# re-encoded: what the destination receives is exactly what the store holds.
_config.STORE_SEND_CHUNKED_DATASET = True


class Sender(Protocol):
    def send(self, items: Sequence[DueDelivery]) -> dict[int, str | None]:
        """Send ``items``; map delivery id -> None (stored) or an error message."""
        ...


class CStoreSender:
    """C-STORE SCU to one DICOM destination (PS3.4 Annex B, SCU role)."""

    def __init__(self, destination: Destination, config: NodeConfig, store: InstanceStore) -> None:
        self.destination = destination
        self.calling_aet = config.node.ae_title
        self.store = store
        self.timeouts = (config.node.acse_timeout, config.node.dimse_timeout, config.node.network_timeout)

    def send(self, items: Sequence[DueDelivery]) -> dict[int, str | None]:
        outcome: dict[int, str | None] = {}
        for chunk in _chunks_by_contexts(items):
            outcome.update(self._send_chunk(chunk))
        return outcome

    def _send_chunk(self, items: Sequence[DueDelivery]) -> dict[int, str | None]:
        dest = self.destination
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = self.timeouts
        ae.connection_timeout = min(10.0, self.timeouts[0])
        for sop_class, ts in sorted(
            {(i.instance.sop_class_uid, i.instance.transfer_syntax_uid) for i in items}
        ):
            ae.add_requested_context(sop_class, ts)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
            message = f"association to {dest.ae_title}@{dest.host}:{dest.port} {reason}"
            return {i.id: message for i in items}
        outcome: dict[int, str | None] = {}
        try:
            for item in items:
                if not assoc.is_established:
                    outcome[item.id] = "association ended before this instance was sent"
                    continue
                path = self.store.path(item.instance.path)
                try:
                    status = assoc.send_c_store(path)
                except (OSError, ValueError, RuntimeError) as exc:
                    outcome[item.id] = f"cannot send {path}: {exc}"
                    continue
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in STORED_STATUSES:
                    outcome[item.id] = None
                elif code == -1:
                    outcome[item.id] = "no C-STORE response (timeout or connection lost)"
                else:
                    outcome[item.id] = f"C-STORE failed with status 0x{code:04X}"
        finally:
            if assoc.is_established:
                assoc.release()
        return outcome


def _chunks_by_contexts(items: Sequence[DueDelivery]) -> list[list[DueDelivery]]:
    chunks: list[list[DueDelivery]] = [[]]
    contexts: set[tuple[str, str]] = set()
    for item in items:
        key = (item.instance.sop_class_uid, item.instance.transfer_syntax_uid)
        if key not in contexts and len(contexts) >= MAX_CONTEXTS:
            chunks.append([])
            contexts = set()
        contexts.add(key)
        chunks[-1].append(item)
    return [c for c in chunks if c]


SENDERS: dict[str, type[CStoreSender]] = {"dicom": CStoreSender}


def backoff(attempts_done: int, base: float, cap: float) -> float:
    """Delay before the next attempt: base, 2 base, 4 base ... capped at ``cap``."""
    return float(min(cap, base * 2 ** max(0, attempts_done - 1)))


class DeliveryLoop:
    """Drains the outbox; one thread in ``serve``."""

    def __init__(
        self,
        config: NodeConfig,
        repo: Repository,
        store: InstanceStore,
        stop: threading.Event,
        wake: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.repo = repo
        self.stop_event = stop
        self.wake = wake or threading.Event()
        self.senders: dict[str, Sender] = {}
        for dest in config.destinations:
            if dest.type not in SENDERS:
                raise DeliveryError(
                    f"destination {dest.name!r}: unknown type {dest.type!r}; known: {sorted(SENDERS)}"
                )
            self.senders[dest.name] = SENDERS[dest.type](dest, config, store)

    def run_once(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        settings = self.config.delivery
        due = self.repo.due_deliveries(settings.batch_size)
        by_dest: dict[str, list[DueDelivery]] = defaultdict(list)
        for item in due:
            by_dest[item.destination].append(item)
        for name, items in by_dest.items():
            sender = self.senders.get(name)
            if sender is None:
                outcome: dict[int, str | None] = {
                    i.id: f"destination {name!r} is not configured" for i in items
                }
            else:
                outcome = sender.send(items)
            self._record(name, items, outcome)
        return len(due)

    def _record(self, name: str, items: Sequence[DueDelivery], outcome: dict[int, str | None]) -> None:
        settings = self.config.delivery
        sent = [i for i in items if outcome.get(i.id, "not attempted") is None]
        self.repo.mark_sent([i.id for i in sent])
        for item in sent:
            log_event(
                log,
                "delivery.sent",
                destination=name,
                delivery_id=item.id,
                sop_instance_uid=item.instance.sop_instance_uid,
                study=item.instance.study_instance_uid,
                attempt=item.attempts + 1,
            )
        now = time.time()
        for item in items:
            error = outcome.get(item.id, "not attempted")
            if error is None:
                continue
            delay = backoff(item.attempts + 1, settings.backoff_seconds, settings.backoff_max_seconds)
            state = self.repo.mark_attempt_failed(item.id, error, settings.max_attempts, now + delay)
            log_event(
                log,
                "delivery.failed" if state == "failed" else "delivery.retry",
                logging.WARNING,
                destination=name,
                delivery_id=item.id,
                sop_instance_uid=item.instance.sop_instance_uid,
                attempt=item.attempts + 1,
                retry_in=delay if state == "pending" else "",
                error=error,
            )

    def run(self) -> None:
        poll = self.config.delivery.poll_seconds
        while not self.stop_event.is_set():
            try:
                attempted = self.run_once()
            except DatabaseError as exc:
                log_event(log, "delivery.db_error", logging.ERROR, error=str(exc))
                attempted = 0
            if not attempted:
                self.wake.wait(poll)
                self.wake.clear()
