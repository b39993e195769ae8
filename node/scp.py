"""The DICOM listener: a pynetdicom AE with C-ECHO and C-STORE SCP (PS3.4 Annexes A and B).

AE construction (:func:`build_ae`) is separate from handler logic (:class:`StoreHandler`).
Handlers never raise: every failure maps to a named status (see :mod:`node.ingest`).

Association negotiation (PS3.8 9.3.4 A-ASSOCIATE-RJ):
- a Called AE Title other than ours -> rejected-permanent, service-user, reason 7
  "called-AE-title-not-recognized";
- a Calling AE Title outside ``allowed_calling_aets`` (when that list is not empty) ->
  rejected-permanent, service-user, reason 3 "calling-AE-title-not-recognized";
- more than ``max_associations`` at once -> rejected-transient, "local-limit-exceeded".
Presentation contexts: Verification, CR, DX For Presentation, DX For Processing and Secondary
Capture Image Storage, each with every transfer syntax pydicom can decode with the installed
pixel-data plugins. Any other abstract syntax is rejected per context ("abstract-syntax-not-
supported", PS3.8 9.3.3.2), never silently accepted. Multi-frame SC classes are left out: a
chest radiograph is a single frame, and the pipeline analyses single frames.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pydicom.pixels
import pydicom.uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

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
from node.logs import log_event
from node.scp_transport import IncomingFile, NodeAE, ReceiveLimits
from node.store import InstanceStore

log = logging.getLogger("node.scp")

STORAGE_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)


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
    __slots__ = ("started", "stored", "failed", "calling_aet", "peer")

    def __init__(self, calling_aet: str, peer: str) -> None:
        self.started = time.monotonic()
        self.stored = 0
        self.failed = 0
        self.calling_aet = calling_aet
        self.peer = peer


class StoreHandler:
    """C-STORE: validate, write, group-commit, answer. Nothing else on the association thread."""

    def __init__(self, config: NodeConfig, store: InstanceStore, committer: GroupCommitter) -> None:
        self.config = config
        self.store = store
        self.committer = committer
        self._stats: weakref.WeakKeyDictionary[Any, _AssocStats] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.stored = 0  # since start, for tests and status

    def _assoc_stats(self, assoc: Any) -> _AssocStats:
        stats = self._stats.get(assoc)
        if stats is None:
            requestor = assoc.requestor
            stats = _AssocStats(str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}")
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

    def _fail(self, stats: _AssocStats, status: int, message: str, request: Any) -> int:
        stats.failed += 1
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

    def handle_accepted(self, event: evt.Event) -> None:
        self._assoc_stats(event.assoc)

    def handle_end(self, event: evt.Event) -> None:
        stats = self._assoc_stats(event.assoc)
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log_event(
            log,
            f"association.{outcome}",
            calling_aet=stats.calling_aet,
            peer=stats.peer,
            stored=stats.stored,
            failed=stats.failed,
            seconds=time.monotonic() - stats.started,
        )

    def handle_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log_event(
            log,
            "association.rejected",
            logging.WARNING,
            calling_aet=str(requestor.ae_title).strip(),
            called_aet=str(event.assoc.acceptor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
        )


def build_ae(config: NodeConfig, incoming_dir: Path) -> AE:
    """The acceptor AE: title, limits, timeouts and the supported presentation contexts."""
    node = config.node
    ae = NodeAE(ae_title=node.ae_title)
    ae.limits = ReceiveLimits(
        incoming_dir=incoming_dir,
        max_instance_bytes=node.max_instance_bytes,
        max_pdu_bytes=node.max_pdu_bytes,
        max_per_host=node.max_associations_per_host,
        acse_timeout=node.acse_timeout,
        network_timeout=node.network_timeout,
    )
    ae.require_called_aet = True
    ae.require_calling_aet = [a for a in node.allowed_calling_aets]
    ae.maximum_associations = node.max_associations
    ae.network_timeout = node.network_timeout
    ae.acse_timeout = node.acse_timeout
    ae.dimse_timeout = node.dimse_timeout
    ae.maximum_pdu_size = node.max_pdu_bytes  # PS3.8 D.1 Maximum Length, enforced by the transport
    syntaxes = decodable_transfer_syntaxes()
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    return ae


def start_listener(config: NodeConfig, handler: StoreHandler) -> ThreadedAssociationServer:
    """Start the SCP in background threads (one per association); returns the server."""
    ae = build_ae(config, handler.store.incoming)
    handlers = [
        (evt.EVT_C_STORE, handler.handle_store),
        (evt.EVT_C_ECHO, handler.handle_echo),
        (evt.EVT_ACCEPTED, handler.handle_accepted),
        (evt.EVT_RELEASED, handler.handle_end),
        (evt.EVT_ABORTED, handler.handle_end),
        (evt.EVT_REJECTED, handler.handle_rejected),
    ]
    server = ae.start_server((config.node.host, config.node.port), block=False, evt_handlers=handlers)
    log_event(
        log,
        "listener.started",
        ae_title=config.node.ae_title,
        host=config.node.host,
        port=config.node.port,
        transfer_syntaxes=len(decodable_transfer_syntaxes()),
    )
    return server
