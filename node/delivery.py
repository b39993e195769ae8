"""Delivery: the persistent outbox drained by C-STORE SCU, with bounded exponential backoff.

Every result object has one ``deliveries`` row per destination, written in the transaction
that finished its job, so a crash never loses a pending delivery: after a restart the loop
picks up every pending row. A row is marked sent only after the destination answered with a
success or warning status (PS3.4 B.2.3: 0x0000, 0xB000, 0xB006, 0xB007 mean the instance was
stored); if the node dies between the send and that mark, the instance is sent again, which a
PACS treats as the same SOP Instance (at-least-once delivery).

Transfer syntax negotiation (PS3.8 9.3.2.2, PS3.5 10): each association proposes, for every SOP
class being sent, one presentation context per transfer syntax the objects can be sent in
(:func:`node.results.encoding.proposal`: the destination's ``transfer_syntaxes`` first, then the
stored syntax, then Explicit and Implicit VR Little Endian), at most 128 contexts per association
(context ids are odd numbers 1-255). Each object goes in the first of its syntaxes that the
destination accepted: as stored (the file's bytes, read in chunks) when that one was accepted,
otherwise re-encoded losslessly from the stored file (a JPEG 2000 SEG or secondary capture is
sent uncompressed to an archive that takes only uncompressed data, such as dcmtk ``storescp``
without options).

A SOP class that the destination accepted in no proposed syntax is refused: no retry can change
that, so those deliveries fail at once (:class:`node.repository.DeliveryFault` REFUSED) with an
error naming the SOP class and the destination, shown by ``cxr-node status``; the study's other
objects still go. No connection, a rejected or aborted association, a timeout and failure
statuses (0xA7xx "out of resources", ...) are transient and retried with backoff.
Destination types live in :data:`SENDERS` so that another transport (e.g. DICOMweb STOW-RS)
can be added beside C-STORE.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import pydicom
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ

from node import audit
from node.config import Destination, NodeConfig
from node.delivery_outcome import SOP_CLASS_NOT_SUPPORTED, DeliveryFailure, Outcome, Sender
from node.errors import DatabaseError, DeliveryError
from node.http.dicomweb_sender import StowRsSender
from node.logs import log_event
from node.repository import DeliveryFault, DeliveryState, DueDelivery, Repository
from node.results.encoding import EncodingError, parse_transfer_syntax, proposal, reencode
from node.store import InstanceStore
from node.tls import node_destination_context

log = logging.getLogger("node.delivery")

# PS3.4 B.2.3 Table B.2-1: success and the warnings (coercion, elements discarded, data set
# does not match SOP class) all mean the SCP stored the instance.
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128
# Result SOP classes without pixel data (SR, KOS): sent in uncompressed syntaxes only.
_NO_PIXELS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

# Send stored files as their bytes (read in chunks after the file meta), never decoded and
# re-encoded when the destination accepted the stored syntax.
_config.STORE_SEND_CHUNKED_DATASET = True


def sop_class_name(uid: str) -> str:
    """'Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4)' for messages an operator reads."""
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _has_pixels(sop_class_uid: str) -> bool:
    return not sop_class_uid.startswith(_NO_PIXELS_PREFIXES)


def _bits_allocated(sop_class_uid: str) -> int:
    """Bits Allocated of the node's own result objects, known from their class: BINARY SEG 1
    (a FRACTIONAL SEG is 8, but is treated as 1 here: it is then only decompressed, never
    compressed on the way out), secondary capture 8, no pixels 0."""
    if not _has_pixels(sop_class_uid):
        return 0
    return 1 if sop_class_uid == SEG_STORAGE else 8


def _rejection_into(rejections: list[str]) -> Callable[[evt.Event], None]:
    """An EVT_PDU_RECV handler noting an A-ASSOCIATE-RJ's result, source and reason.

    Read from the PDU itself: pynetdicom 3.0's requestor reports a rejection that arrives before
    its own thread has looked at the connection as an abort (16 of 200 against dcmtk
    ``storescp --refuse``), and its rejection says nothing of why; the reason tells an operator
    whether to fix the destination's AE title or wait for its load to fall.
    """
    def note(event: evt.Event) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            rejections.append(f"{pdu.result_str}, {pdu.source_str}: {pdu.reason_str}")
    return note


class CStoreSender:
    """C-STORE SCU to one DICOM destination (PS3.4 Annex B, SCU role)."""

    def __init__(self, destination: Destination, config: NodeConfig, store: InstanceStore) -> None:
        self.destination = destination
        self.calling_aet = config.node.ae_title
        self.store = store
        self.timeouts = (config.node.acse_timeout, config.node.dimse_timeout, config.node.network_timeout)
        # DICOM TLS (PS3.15 B.9): the server is verified against the destination's CA bundle and
        # must name dest.host; ConfigError (naming the file) when a certificate or key is unusable.
        self.tls_args = (node_destination_context(config, destination), destination.host) if destination.tls \
            else None
        try:
            self.preferred = tuple(parse_transfer_syntax(str(ts)) for ts in destination.transfer_syntaxes)
        except EncodingError as exc:
            raise DeliveryError(f"destination {destination.name!r}: transfer_syntaxes: {exc}") from exc

    @property
    def label(self) -> str:
        dest = self.destination
        return f"destination {dest.name!r} ({dest.ae_title}@{dest.host}:{dest.port})"

    def syntaxes(self, item: DueDelivery) -> tuple[UID, ...]:
        """The transfer syntaxes proposed for one object, best first."""
        sop_class = item.instance.sop_class_uid
        return proposal(item.instance.transfer_syntax_uid, self.preferred, has_pixels=_has_pixels(sop_class),
                        bits_allocated=_bits_allocated(sop_class))

    def send(self, items: Sequence[DueDelivery]) -> dict[int, Outcome]:
        outcome: dict[int, Outcome] = {}
        for chunk in _chunks_by_contexts(items, self.syntaxes):
            outcome.update(self._send_chunk(chunk))
        return outcome

    def _send_chunk(self, items: Sequence[DueDelivery]) -> dict[int, Outcome]:
        dest = self.destination
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = self.timeouts
        ae.connection_timeout = min(10.0, self.timeouts[0])
        # One context per (SOP class, transfer syntax): the acceptor answers each on its own
        # (PS3.8 9.3.3.2), so the node learns every syntax it takes, not just one per class.
        pairs = {(i.instance.sop_class_uid, ts) for i in items for ts in self.syntaxes(i)}
        for sop_class, ts in sorted(pairs):
            ae.add_requested_context(sop_class, ts)
        rejections: list[str] = []
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=self.tls_args,
                             evt_handlers=[(evt.EVT_PDU_RECV, _rejection_into(rejections))])
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
            if rejections:
                reason = f"rejected ({rejections[0]})"
            elif self.tls_args is not None and not (assoc.is_rejected or assoc.is_aborted):
                reason = "no TLS connection (refused, or the TLS handshake failed: see the log)"
            message = f"association to {dest.ae_title}@{dest.host}:{dest.port} {reason}"
            return {i.id: message for i in items}
        accepted: dict[str, set[UID]] = defaultdict(set)
        for cx in assoc.accepted_contexts:
            accepted[str(cx.abstract_syntax)].add(UID(cx.transfer_syntax[0]))
        outcome: dict[int, Outcome] = {}
        try:
            for item in items:
                if not assoc.is_established:
                    outcome[item.id] = "association ended before this instance was sent"
                    continue
                outcome[item.id] = self._send_one(assoc, item, accepted)
        finally:
            if assoc.is_established:
                assoc.release()
        return outcome

    def _send_one(self, assoc: object, item: DueDelivery, accepted: dict[str, set[UID]]) -> Outcome:
        sop_class = item.instance.sop_class_uid
        proposed = self.syntaxes(item)
        chosen = next((ts for ts in proposed if ts in accepted.get(sop_class, set())), None)
        if chosen is None:
            names = ", ".join(ts.name for ts in proposed)
            return DeliveryFailure(
                f"{self.label} refused {sop_class_name(sop_class)}: no presentation context accepted "
                f"in any proposed transfer syntax ({names})", DeliveryFault.REFUSED)
        path = self.store.path(item.instance.path)
        try:
            if chosen == UID(item.instance.transfer_syntax_uid):
                status = assoc.send_c_store(path)  # type: ignore[attr-defined]
            else:
                status = assoc.send_c_store(reencode(pydicom.dcmread(path), chosen))  # type: ignore[attr-defined]
        except (OSError, ValueError, RuntimeError, EncodingError) as exc:
            return f"cannot send {path} in {chosen.name}: {exc}"
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in STORED_STATUSES:
            return None
        if code == -1:
            return "no C-STORE response (timeout or connection lost)"
        if code == SOP_CLASS_NOT_SUPPORTED:
            return DeliveryFailure(f"{self.label} refused {sop_class_name(sop_class)}: C-STORE status 0x0122 "
                                   "(SOP Class not supported)", DeliveryFault.REFUSED)
        return f"C-STORE failed with status 0x{code:04X}"


def _chunks_by_contexts(items: Sequence[DueDelivery], syntaxes: object) -> list[list[DueDelivery]]:
    """Split ``items`` so that no association proposes more than MAX_CONTEXTS contexts."""
    chunks: list[list[DueDelivery]] = [[]]
    contexts: set[tuple[str, str]] = set()
    for item in items:
        keys = {(item.instance.sop_class_uid, str(ts)) for ts in syntaxes(item)}  # type: ignore[operator]
        if len(contexts | keys) > MAX_CONTEXTS and chunks[-1]:
            chunks.append([])
            contexts = set()
        contexts |= keys
        chunks[-1].append(item)
    return [c for c in chunks if c]


SenderFactory = Callable[[Destination, NodeConfig, InstanceStore], Sender]
# Registry of destination types: [[destinations]] type -> the sender class made for each one.
SENDERS: dict[str, SenderFactory] = {"dicom": CStoreSender, "dicomweb": StowRsSender}


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
        audit_trail: audit.AuditTrail | None = None,
    ) -> None:
        self.config = config
        self.repo = repo
        self.stop_event = stop
        self.wake = wake or threading.Event()
        self.audit = audit_trail or audit.open_audit_trail(config)
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
                outcome: dict[int, Outcome] = {
                    i.id: f"destination {name!r} is not configured" for i in items
                }
            else:
                outcome = sender.send(items)
            self._record(name, items, outcome)
        return len(due)

    def _record(self, name: str, items: Sequence[DueDelivery], outcome: dict[int, Outcome]) -> None:
        settings = self.config.delivery
        sent = [i for i in items if outcome.get(i.id, "not attempted") is None]
        self.repo.mark_sent([i.id for i in sent])
        self._audit(name, items, outcome)
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
            failure = outcome.get(item.id, "not attempted")
            if failure is None:
                continue
            if not isinstance(failure, DeliveryFailure):
                failure = DeliveryFailure(str(failure))
            delay = backoff(item.attempts + 1, settings.backoff_seconds, settings.backoff_max_seconds)
            state = self.repo.mark_attempt_failed(
                item.id, failure.message, settings.max_attempts, now + delay, failure.fault)
            log_event(
                log,
                "delivery.failed" if state == DeliveryState.FAILED else "delivery.retry",
                logging.WARNING,
                destination=name,
                delivery_id=item.id,
                sop_instance_uid=item.instance.sop_instance_uid,
                attempt=item.attempts + 1,
                fault=failure.fault.value,
                retry_in=delay if state == DeliveryState.PENDING else "",
                error=failure.message,
            )

    def _audit(self, name: str, items: Sequence[DueDelivery], outcome: dict[int, Outcome]) -> None:
        """One PS3.15 A.5.3.4 record per destination and outcome: the sent objects together, the
        failed ones grouped by their error."""
        dest = next((d for d in self.config.destinations if d.name == name), Destination(name=name, type=""))
        dicom = dest.type == "dicom"
        groups: dict[str | None, list[DueDelivery]] = defaultdict(list)
        for item in items:
            failure = outcome.get(item.id, "not attempted")
            groups[None if failure is None else str(getattr(failure, "message", failure))].append(item)
        for error, group in groups.items():
            self.audit.record(audit.instances_sent(
                node_aet=self.config.node.ae_title,
                node_host=socket.gethostname(),
                destination=name,
                destination_aet=dest.ae_title if dicom else "",
                destination_host=dest.host if dicom else dest.url,
                instances=[audit.InstanceRef(i.instance.study_instance_uid, i.instance.sop_class_uid,
                                             i.instance.sop_instance_uid) for i in group],
                error=error,
                over_tls=dest.tls or dest.url.startswith("https://"),
            ))

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
