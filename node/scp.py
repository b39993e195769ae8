"""The DICOM listener: a pynetdicom AE with C-ECHO and C-STORE SCP (PS3.4 Annexes A and B).

AE construction (:func:`build_ae`) is separate from handler logic (:class:`StoreHandler`).
Handlers never raise: every failure maps to a named status (see :mod:`node.ingest`).

Association negotiation (PS3.8 9.3.4 A-ASSOCIATE-RJ):
- a Called AE Title other than ours -> rejected-permanent, service-user, reason 7
  "called-AE-title-not-recognized";
- a Calling AE Title outside ``allowed_calling_aets`` (when that list is not empty) ->
  rejected-permanent, service-user, reason 3 "calling-AE-title-not-recognized";
- more than ``max_associations`` at once -> rejected-transient, "local-limit-exceeded";
- with ``[[peers]]``, a Calling AE Title not listed for the host the connection comes from ->
  rejected-permanent, service-user, reason 3, logged with the host (node.peers).
A second server on ``tls_port`` speaks DICOM TLS (node.tls); every association, refused TLS
handshake and C-STORE leaves an audit record (node.audit).
Presentation contexts: Verification, and every Storage SOP Class (node.sop_classes) with every
transfer syntax pydicom can decode with the installed pixel-data plugins. The radiograph classes are
analysed; any other stored object (a dose SR, a presentation state, another system's SEG) is kept
with its study without a result, so a PACS forwarding a whole study never sees a refusal. Any other
abstract syntax is rejected per context ("abstract-syntax-not-supported", PS3.8 9.3.3.2).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pydicom.pixels
import pydicom.uid
from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from node import audit
from node.association_slots import AssociationSlots
from node.config import NodeConfig
from node.errors import DatabaseError, DiskFullError, InvalidInstanceError, StoreError
from node.ingest import (
    STATUS_DATABASE_FAILURE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    GroupCommitter,
    Header,
    file_meta_bytes,
    inspect_dataset,
    inspect_file,
    store_durably,
    store_received,
)
from node.ingest.outcomes import ReceiveOutcomes
from node.logs import log_event
from node.peers import PeerTable, reject_calling_aet
from node.scp_transport import IncomingFile, NodeAE, NodeServer, ReceiveLimits
from node.sop_classes import STORED_SOP_CLASSES
from node.store import InstanceStore
from node.tls import node_listener_context, tls_peer

log = logging.getLogger("node.scp")

SLOTS_LOCK_FILE = "association-slots.lock"  # in data_dir: the slots' lock between listener processes
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # PS3.4 A.4: C-ECHO


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can decode here (uncompressed ones plus those whose
    pixel-data decoder has an available plugin), explicit little endian first so that it is
    the one chosen when a peer offers several."""
    found = [
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    ]
    if pydicom.uid.ExplicitVRBigEndian in pydicom.uid.AllTransferSyntaxes:
        found.append(pydicom.uid.ExplicitVRBigEndian)
    for ts in pydicom.uid.AllTransferSyntaxes:
        if ts in found or not ts.is_encapsulated:
            continue
        try:
            if pydicom.pixels.get_decoder(ts).is_available:
                found.append(ts)
        except NotImplementedError:
            continue
    return [str(ts) for ts in found]


class _AssocStats:
    """One association's counts, and the received instances its next audit record will list."""

    __slots__ = ("started", "stored", "failed", "calling_aet", "peer", "host", "tls", "received", "lock")

    def __init__(self, calling_aet: str, peer: str, host: str = "", tls: bool = False) -> None:
        self.started = time.monotonic()
        self.stored = 0
        self.failed = 0
        self.calling_aet = calling_aet
        self.peer = peer
        self.host = host
        self.tls = tls
        self.received = audit.ReceivedInstances()  # stored since the association's last audit record
        self.lock = threading.Lock()


def _socket(assoc: Any) -> Any:
    return getattr(getattr(assoc.dul, "socket", None), "socket", None)


# PS3.8 9.3.4 (result, source, reason) of the rejections pynetdicom makes itself.
_REJECT_REASONS: dict[tuple[int | None, int | None, int | None], str] = {
    (1, 1, 3): "calling AE title not recognised",
    (1, 1, 7): "called AE title not recognised",
    (2, 3, 2): "local limit exceeded",
}


class StoreHandler:
    """C-STORE: validate, write, group-commit, answer. Nothing else on the association thread."""

    def __init__(
        self,
        config: NodeConfig,
        store: InstanceStore,
        committer: GroupCommitter,
        audit_trail: audit.AuditTrail | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.committer = committer
        self.peers = PeerTable([(p.ae_title, p.host) for p in config.peers])
        self.audit = audit_trail or audit.open_audit_trail(config)
        self._hostname = socket.gethostname()
        self._reasons: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._stats: weakref.WeakKeyDictionary[Any, _AssocStats] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.stored = 0  # since start, for tests and status
        self.outcomes = ReceiveOutcomes()  # refusals by status, for /metrics

    def _assoc_stats(self, assoc: Any) -> _AssocStats:
        stats = self._stats.get(assoc)
        if stats is None:
            requestor = assoc.requestor
            stats = _AssocStats(str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}",
                                str(requestor.address), tls_peer(_socket(assoc)) is not None)
            with self._lock:
                self._stats[assoc] = stats
        return stats

    def handle_store(self, event: evt.Event) -> int:
        stats = self._assoc_stats(event.assoc)
        request = event.request
        context = event.context
        incoming = getattr(request, "_dataset_file", None)
        try:
            if isinstance(incoming, IncomingFile):
                header, new = self._store_streamed(incoming, request, context, stats)
            else:  # no data set fragment came (empty data set): the in-memory path answers
                header, new = self._store_in_memory(request, context, stats)
        except InvalidInstanceError as exc:
            return self._fail(stats, exc.status, str(exc), request)
        except DiskFullError as exc:
            return self._fail(stats, STATUS_OUT_OF_RESOURCES, str(exc), request)
        except StoreError as exc:
            return self._fail(stats, STATUS_OUT_OF_RESOURCES, str(exc), request)
        except DatabaseError as exc:
            return self._fail(stats, STATUS_DATABASE_FAILURE, str(exc), request)
        except Exception as exc:  # a handler must answer; unexpected errors are logged in full
            log.exception("unexpected error in C-STORE handler")
            return self._fail(stats, STATUS_DATABASE_FAILURE, f"{exc.__class__.__name__}: {exc}", request)
        stats.stored += 1
        with self._lock:
            self.stored += 1
        self._note_received(stats, audit.InstanceRef(
            header.study_instance_uid, header.sop_class_uid, header.sop_instance_uid), duplicate=not new)
        return STATUS_SUCCESS

    def _store_streamed(
        self, incoming: IncomingFile, request: Any, context: Any, stats: _AssocStats
    ) -> tuple[Header, bool]:
        """The data set is already in the store's incoming folder (node.scp_transport): check
        it from the file, then rename it into place."""
        node = self.config.node
        incoming.close()
        if incoming.error is not None:
            raise StoreError(f"cannot write the received data set: {incoming.error}")
        if incoming.over_limit:
            raise InvalidInstanceError(
                f"instance is {incoming.received} bytes, over max_instance_bytes={node.max_instance_bytes}",
                STATUS_OUT_OF_RESOURCES,
            )
        path = Path(incoming.name)
        ts = context.transfer_syntax
        header = inspect_file(
            path,
            incoming.data_offset,
            ts,
            expected_sop_class=context.abstract_syntax,
            affected_sop_instance=str(request.AffectedSOPInstanceUID or ""),
            max_bytes=node.max_instance_bytes,
            max_pixels=node.max_pixels,
        )
        self.store.check_free_space(0)
        new = store_received(
            self.store, self.committer, header, path, transfer_syntax=ts, calling_aet=stats.calling_aet
        )
        return header, new

    def _store_in_memory(self, request: Any, context: Any, stats: _AssocStats) -> tuple[Header, bool]:
        node = self.config.node
        ts = context.transfer_syntax
        buffer = request.DataSet.getbuffer()
        try:
            header = inspect_dataset(
                buffer,
                ts,
                expected_sop_class=context.abstract_syntax,
                affected_sop_instance=str(request.AffectedSOPInstanceUID or ""),
                max_bytes=node.max_instance_bytes,
                max_pixels=node.max_pixels,
            )
            self.store.check_free_space(len(buffer))
            meta = file_meta_bytes(header.sop_class_uid, header.sop_instance_uid, ts, stats.calling_aet)
            new = store_durably(
                self.store, self.committer, header, (meta, buffer), transfer_syntax=ts,
                calling_aet=stats.calling_aet,
            )
        finally:
            try:
                buffer.release()  # let pynetdicom free or reuse the request's buffer
            except BufferError:  # a view is still referenced: the GC releases it later
                pass
        return header, new

    def _note_received(self, stats: _AssocStats, ref: audit.InstanceRef, *, duplicate: bool) -> None:
        """Gather a stored instance for the association's audit record (node.audit: one record per
        association and study); record what is due."""
        with stats.lock:
            due = stats.received.add(ref, duplicate=duplicate)
        for held, refs in due:
            self._audit_received(stats, refs, STATUS_SUCCESS, duplicate=held)

    def _record_rest(self, stats: _AssocStats) -> None:
        """The association ended: record what it stored since its last record."""
        with stats.lock:
            due = stats.received.take()
        for held, refs in due:
            self._audit_received(stats, refs, STATUS_SUCCESS, duplicate=held)

    def _audit_refused(self, stats: _AssocStats, request: Any, status: int, reason: str) -> None:
        """A refused C-STORE: a record of its own, with the status and the reason."""
        ref = audit.InstanceRef("", str(request.AffectedSOPClassUID or ""),
                                str(request.AffectedSOPInstanceUID or ""))
        self._audit_received(stats, [ref], status, reason=reason)

    def _audit_received(self, stats: _AssocStats, refs: list[audit.InstanceRef], status: int, *,
                        duplicate: bool = False, reason: str = "") -> None:
        """PS3.15 A.5.3.4 DICOM Instances Transferred, the receiver's record (UIDs only)."""
        self.audit.record(audit.instances_received(
            calling_aet=stats.calling_aet, host=stats.host, node_aet=self.config.node.ae_title,
            node_host=self._hostname, over_tls=stats.tls, status=status, duplicate=duplicate, reason=reason,
            instances=refs))

    def _fail(self, stats: _AssocStats, status: int, message: str, request: Any) -> int:
        stats.failed += 1
        self.outcomes.refused("dimse", status)
        self._audit_refused(stats, request, status, message)
        log_event(
            log,
            "store.failed",
            logging.WARNING,
            calling_aet=stats.calling_aet,
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            status=f"0x{status:04X}",
            reason=message,
        )
        return status

    def handle_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS  # PS3.7 9.3.5: C-ECHO success

    def handle_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: the ``[[peers]]`` check (AE title bound to host) before negotiation.

        A notification handler that raises is only logged by pynetdicom and the association
        would go on, so any error here rejects (fail closed)."""
        if not self.peers.enabled:
            return
        assoc = event.assoc
        request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ, set before EVT_REQUESTED
        calling = str(request.calling_ae_title).strip() if request is not None else ""
        try:
            decision = self.peers.check(calling, str(assoc.requestor.address))
            reason = decision.reason
        except Exception as exc:  # fail closed, see above
            log.exception("peer check failed")
            decision, reason = None, f"peer check failed: {exc.__class__.__name__}"
        if decision is None or not decision.allowed:
            self._reasons[assoc] = reason
            reject_calling_aet(assoc)

    def handle_accepted(self, event: evt.Event) -> None:
        stats = self._assoc_stats(event.assoc)
        tls = tls_peer(_socket(event.assoc))
        log_event(log, "association.accepted", calling_aet=stats.calling_aet, peer=stats.peer,
                  transport="tls" if tls else "tcp", tls_subject=tls.subject if tls else "")
        self.audit.record(audit.association(
            accepted=True, calling_aet=stats.calling_aet, host=stats.host, node_aet=self.config.node.ae_title,
            node_host=self._hostname, over_tls=tls is not None, tls=tls))

    def handle_end(self, event: evt.Event) -> None:
        stats = self._assoc_stats(event.assoc)
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        self._record_rest(stats)
        log_event(
            log,
            f"association.{outcome}",
            calling_aet=stats.calling_aet,
            peer=stats.peer,
            stored=stats.stored,
            failed=stats.failed,
            seconds=time.monotonic() - stats.started,
        )

    def handle_closed(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: an association whose end raised no EVT_RELEASED/EVT_ABORTED (its DUL
        thread stopped) still gets its received instances audited."""
        stats = self._stats.get(event.assoc)
        if stats is not None:
            self._record_rest(stats)

    def handle_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        requestor = assoc.requestor
        reason = self._reasons.get(assoc, "")
        rj = assoc.acceptor.primitive
        if not reason and rj is not None:
            reason = _REJECT_REASONS.get((rj.result, rj.result_source, rj.diagnostic), "rejected")
        tls = tls_peer(_socket(assoc))
        log_event(
            log,
            "association.rejected",
            logging.WARNING,
            calling_aet=str(requestor.ae_title).strip(),
            called_aet=str(requestor.primitive.called_ae_title).strip() if requestor.primitive else "",
            peer=f"{requestor.address}:{requestor.port}",
            transport="tls" if tls else "tcp",
            reason=reason,
        )
        self.audit.record(audit.association(
            accepted=False, calling_aet=str(requestor.ae_title).strip(), host=str(requestor.address),
            node_aet=self.config.node.ae_title, node_host=self._hostname, over_tls=tls is not None, tls=tls,
            reason=reason))

    def handle_tls_refused(self, host: str, reason: str) -> None:
        """A connection to the TLS port whose handshake failed (node.tls.ListenerContext)."""
        log_event(log, "tls.refused", logging.WARNING, peer=host, reason=reason)
        self.audit.record(audit.tls_refused(host=host, node_aet=self.config.node.ae_title,
                                            node_host=self._hostname, reason=reason))


def association_slots(config: NodeConfig) -> AssociationSlots:
    """The node's open-connection table (node.association_slots), shared by its listener processes."""
    node = config.node
    return AssociationSlots(node.max_associations, node.max_associations_per_host,
                            config.data_dir / SLOTS_LOCK_FILE)


def build_ae(config: NodeConfig, incoming_dir: Path, slots: AssociationSlots) -> NodeAE:
    """The acceptor AE: title, limits, timeouts and the supported presentation contexts.

    ``slots`` admits each connection within the node-wide association limits; pynetdicom's own
    per-process ``maximum_associations`` is the same figure, a backstop that never comes first.
    """
    node = config.node
    ae = NodeAE(ae_title=node.ae_title)
    ae.limits = ReceiveLimits(
        incoming_dir=incoming_dir,
        max_instance_bytes=node.max_instance_bytes,
        max_pdu_bytes=node.max_pdu_bytes,
        slots=slots,
        acse_timeout=node.acse_timeout,
        network_timeout=node.network_timeout,
        early_sync=node.durability == "fsync",
    )
    ae.require_called_aet = True
    ae.require_calling_aet = [a for a in node.allowed_calling_aets]
    ae.maximum_associations = node.max_associations
    ae.network_timeout = node.network_timeout
    ae.acse_timeout = node.acse_timeout
    ae.dimse_timeout = node.dimse_timeout
    ae.maximum_pdu_size = node.max_pdu_bytes  # PS3.8 D.1 Maximum Length, enforced by the transport
    syntaxes = decodable_transfer_syntaxes()
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for sop_class in STORED_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    return ae


class Listeners:
    """The plain and/or TLS servers of the one AE: ``shutdown`` stops accepting on all of them
    and leaves running associations to finish (``ae.active_associations``)."""

    def __init__(self, ae: NodeAE, servers: list[ThreadedAssociationServer]) -> None:
        self.ae = ae
        self.servers = servers

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()

    def close(self, grace: float) -> None:
        """Stop accepting; give established associations ``grace`` seconds to end, then abort them.

        An instance whose C-STORE is cut off this way was not acknowledged (or, if it was
        committed just before, a resend is idempotent), so nothing acknowledged is lost. A
        connection with no association yet has nothing to finish and is aborted at once: a TCP
        probe that connects and closes without an A-ASSOCIATE-RQ (a load balancer's check) leaves
        its acceptor waiting until ``acse_timeout``, which would otherwise hold the stop for the
        whole grace.
        """
        self.shutdown()
        for server in self.servers:
            if isinstance(server, NodeServer):
                server.stop_starting()  # every association that will ever run is now listed below
        active = [a for a in self.ae.active_associations if a.is_acceptor]
        running = [a for a in active if a.is_established]
        for assoc in active:
            if assoc not in running and assoc.is_alive():
                _end_unestablished(assoc)  # its thread ends on its own (a daemon); nothing to wait for
        deadline = time.monotonic() + grace
        while any(a.is_alive() for a in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in running:
            if assoc.is_alive():
                assoc.abort()
        self.ae.limits.slots.close()  # its lock file; the table lives on for the other processes
        log_event(log, "listener.stopped", associations_aborted=sum(1 for a in active if a.is_aborted))


def _end_unestablished(assoc: Any) -> None:
    """End a connection that has no association yet. Before its A-ASSOCIATE-RQ (state Sta2) an
    A-ABORT is not a valid event (PS3.8 Table 9-10: pynetdicom's reactor raises on it), so the transport
    is closed (Evt17, AA-5); later it is aborted."""
    transport = getattr(assoc.dul, "socket", None)
    if assoc.dul.state_machine.current_state == "Sta2" and transport is not None:
        transport.close()
    else:
        assoc.abort()


def listening_ports(config: NodeConfig) -> list[tuple[str, int]]:
    """The node's listening ports by transport: ``("tcp", port)`` unless ``port`` is 0 with a
    ``tls_port``, and ``("tls", tls_port)`` when that is set."""
    node = config.node
    ports: list[tuple[str, int]] = []
    if node.port > 0 or node.tls_port == 0:
        ports.append(("tcp", node.port))
    if node.tls_port > 0:
        ports.append(("tls", node.tls_port))
    return ports


def start_listener(
    config: NodeConfig, handler: StoreHandler, *, sockets: dict[str, socket.socket] | None = None,
    slots: AssociationSlots | None = None,
) -> Listeners:
    """Start the SCP in background threads (one per association): on ``port`` (plain TCP,
    unless it is 0 with a ``tls_port``) and on ``tls_port`` (DICOM TLS, PS3.15 B.9).

    ``sockets`` (by transport, "tcp"/"tls") are listening sockets bound by the serve process,
    which this process then accepts on beside the other ``listener_processes`` (node.listener_pool),
    counting its connections in their shared ``slots``.
    """
    node = config.node
    ae = build_ae(config, handler.store.incoming, slots if slots is not None else association_slots(config))
    ae.listening_sockets = dict(sockets or {})
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_REQUESTED, handler.handle_requested),
        (evt.EVT_C_STORE, handler.handle_store),
        (evt.EVT_C_ECHO, handler.handle_echo),
        (evt.EVT_ACCEPTED, handler.handle_accepted),
        (evt.EVT_RELEASED, handler.handle_end),
        (evt.EVT_ABORTED, handler.handle_end),
        (evt.EVT_CONN_CLOSE, handler.handle_closed),
        (evt.EVT_REJECTED, handler.handle_rejected),
    ]
    servers: list[ThreadedAssociationServer] = []
    try:
        for transport, port in listening_ports(config):
            ssl_context = (node_listener_context(config, on_failure=handler.handle_tls_refused)
                           if transport == "tls" else None)
            server = ae.start_server((node.host, port), block=False, evt_handlers=handlers,
                                     ssl_context=ssl_context)
            if server is None:  # block=False returns the running server
                raise OSError(f"pynetdicom started no server on port {port}")
            servers.append(server)
            log_event(
                log,
                "listener.started",
                ae_title=node.ae_title,
                host=node.host,
                port=server.server_address[1],
                transport="tls" if ssl_context else "tcp",
                peers=len(handler.peers),
                transfer_syntaxes=len(decodable_transfer_syntaxes()),
            )
    except OSError:
        for server in servers:
            server.shutdown()
        raise
    return Listeners(ae, servers)
