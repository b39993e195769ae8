"""The listener's transport, bounded in time and memory, built on pynetdicom's own hooks.

pynetdicom's acceptor as it comes reads a PDU with blocking ``recv`` calls and no timeout once its
first bytes arrived, holds each C-STORE data set whole in memory and accepts any PDU length the
peer announces. Against a faulty or hostile peer that means a connection that stops half-way
through a PDU holds its association slot forever, and one large data set costs its size in RAM.
This module closes those gaps without rewriting the library:

- :class:`NodeAE` passes :class:`NodeServer` / :class:`NodeRequestHandler` to pynetdicom
  through ``AE.make_server(server_class=..., request_handler=...)``.
- :class:`NodeServer` admits a connection only within the node-wide limits (``max_associations``,
  and ``max_associations_per_host`` so that half-open sockets from one address cannot fill
  ``max_associations``; node.association_slots, exact across listener processes), answering the
  excess with A-ASSOCIATE-RJ transient / local-limit-exceeded (PS3.8 9.3.4), and sets TCP_NODELAY on
  every accepted socket (a C-STORE-RSP is one small write: it must not wait for an ACK).
- :class:`BoundedSocket` reads each PDU with a deadline (``acse_timeout`` before the association
  is established, ``network_timeout`` after) and refuses a PDU longer than the node can take
  (the advertised maximum PDU length, PS3.8 D.1), reading into one buffer instead of 4 KiB
  pieces, with TCP_QUICKACK so that a sender whose small writes wait for an acknowledgement
  (Nagle) is not held by the receiver's delayed ACK.
- :class:`Wakeup` takes the polling out of pynetdicom's reactors: as it comes, the DUL thread
  sleeps 1 ms between looks at the socket and at its outgoing queue, and the association thread
  1 ms between looks for a complete message, so every C-STORE waits for three such naps (about
  1.5 ms on loopback, half of a 256 x 256 instance's turn-round). Here the DUL thread waits in
  ``select`` on the socket *and* on a wake-up socket that every queued outgoing primitive
  signals, and the association thread waits on its message queue: each reacts at once. An idle
  association wakes every ``IDLE_WAIT`` (50 ms) for its timers instead of every millisecond: a
  stop, and A-RELEASE / A-ABORT from the peer, wake its threads like a message (four idle threads
  waking a thousand times a second each took the interpreter lock from the busy ones).
- :class:`ReceivingDIMSE` streams each C-STORE data set to :class:`IncomingFile` in the store's
  incoming folder (what ``_config.STORE_RECV_CHUNKED_DATASET`` does, but per association and
  on the store's file system, so an accepted file is renamed into place), counting its bytes
  as they arrive: beyond ``max_instance_bytes`` the rest is discarded and the request is
  answered 0xA700.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.association_slots import AssociationSlots
from node.ingest import file_meta_bytes
from node.logs import log_event
from node.refusals import Refuser

log = logging.getLogger("node.scp")

_NON_PDATA_MAX = 1 << 20  # A-ASSOCIATE-RQ and the other control PDUs are a few KiB at most
# PS3.8 9.3.4: A-ASSOCIATE-RJ, result 2 rejected-transient, source 3 service-provider
# (presentation related), reason 2 local-limit-exceeded.
_RJ_LOCAL_LIMIT = struct.pack(">BBLBBBB", 0x03, 0x00, 4, 0x00, 0x02, 0x03, 0x02)
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
# Connections over a limit on the TLS port whose handshake may run at once (each on its own
# thread, up to the handshake timeout, before their A-ASSOCIATE-RJ); more are closed unanswered.
TLS_REFUSALS_IN_HANDSHAKE = 8
# How long a reactor waits for its next event before its own housekeeping (timers, release,
# abort, kill): pynetdicom's own loop delay.
REACTOR_WAIT = 0.001
# How long the association thread waits for a DIMSE message, and the DUL thread for the socket,
# before looking at their timers: what they wait for wakes them at once (a message; a primitive
# from the peer, _WakingUserQueue; a primitive to send, _WakingQueue; a stop, NodeRequestHandler).
IDLE_WAIT = 0.05
# With durability "fsync", a data set is flushed to disk in the background each time this much of
# it has arrived, so the fsync before its acknowledgement finds little left to write (an 8 MiB
# image: its fsync, ~7 ms here, came after the last fragment, on the association's critical path).
EARLY_SYNC_BYTES = 2 << 20


class ReceiveLimits:
    """What the transport enforces, from ``[node]``."""

    def __init__(
        self,
        *,
        incoming_dir: Path,
        max_instance_bytes: int,
        max_pdu_bytes: int,
        slots: AssociationSlots,
        acse_timeout: float,
        network_timeout: float,
        early_sync: bool = False,
    ) -> None:
        self.incoming_dir = incoming_dir
        self.max_instance_bytes = max_instance_bytes
        # A P-DATA-TF PDU may not exceed what we advertise; 0 (unlimited) still means one data set.
        self.max_pdu_read = max(max_pdu_bytes or max_instance_bytes + (1 << 16), _NON_PDATA_MAX)
        self.slots = slots  # node-wide open connections, total and per host
        self.acse_timeout = acse_timeout
        self.network_timeout = network_timeout
        # flushes of data sets still arriving (IncomingFile), off the DUL threads
        self.writeback = (ThreadPoolExecutor(max_workers=2, thread_name_prefix="rx-writeback")
                          if early_sync else None)


class IncomingFile:
    """A C-STORE data set being received: File Meta Information, then the data set fragments as
    they arrive. Stands in for the temporary file pynetdicom's chunked receive writes (it
    calls ``write``, ``file.flush``, ``close`` and reads ``name``) and never raises into the
    DUL thread: a write error or the size limit is recorded and reported by the handler."""

    def __init__(self, directory: Path, meta: bytes, max_bytes: int,
                 writeback: ThreadPoolExecutor | None = None) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".rx-", suffix=".part")
        self.name = name
        self.file = self  # pynetdicom calls ``file.flush()`` after each fragment
        self.data_offset = len(meta)
        self.max_bytes = max_bytes
        self.received = 0
        self.over_limit = False
        self.error: OSError | None = None
        self._fd = fd
        self._writeback = writeback  # durability "fsync": flush every EARLY_SYNC_BYTES as it arrives
        self._unsynced = 0
        self._sync: Future[None] | None = None
        self.early_flushes = 0
        self._write(meta)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.error = exc
            self._discard()

    def write(self, data: bytes | memoryview) -> int:
        self.received += len(data)
        if self.over_limit or self.error is not None or self._fd < 0:
            return len(data)
        if self.received > self.max_bytes:
            self.over_limit = True  # keep reading the peer's PDUs, store nothing more
            self._discard()
            return len(data)
        self._write(data)
        self._unsynced += len(data)
        if (self._writeback is not None and self._unsynced >= EARLY_SYNC_BYTES and self.error is None
                and (self._sync is None or self._sync.done())):
            self._unsynced = 0
            self._sync = self._writeback.submit(os.fdatasync, self._fd)
            self.early_flushes += 1
        return len(data)

    def _discard(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass

    def flush(self) -> None:
        """Nothing is buffered: every fragment went to the kernel with ``os.write``."""

    def close(self) -> None:
        if self._sync is not None:  # the descriptor must outlive its flush
            try:
                self._sync.result()
            except OSError as exc:
                # reported now: a later fsync through another descriptor may not see this error
                self.error = self.error or exc
            self._sync = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        try:
            os.unlink(self.name)
        except OSError:
            pass


def _ascii(value: Any) -> str:
    text = str(value or "")
    return text if text.isascii() else ""


class Wakeup:
    """A socket pair that lets one thread wake another's ``select`` (see the module doc)."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def signal(self) -> None:
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, OSError):  # already signalled (buffer full) or closed: nothing lost
            pass

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class _WakingQueue(queue.Queue[Any]):
    """The DUL's outgoing primitive queue: putting a primitive wakes the DUL thread."""

    def __init__(self, wakeup: Wakeup) -> None:
        super().__init__()
        self._wakeup = wakeup

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wakeup.signal()


class _WakingUserQueue(queue.Queue[Any]):
    """The DUL's queue to the association (A-RELEASE, A-ABORT, ...): putting a primitive also puts
    ``(None, None)`` on the DIMSE message queue, the token pynetdicom itself puts there on an abort,
    so the association thread waiting for a message looks at its release and abort checks at once."""

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self._messages = messages

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._messages.put((None, None))


class ReceivingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, with C-STORE data sets streamed to an IncomingFile.

    pynetdicom decodes the command set; when the first data set fragment of a C-STORE-RQ comes
    in, the message gets our file as its ``_data_set_file`` (the attribute its chunked mode
    uses), so pynetdicom writes every fragment there and hands the handler
    ``event.dataset_path``; after the handler it closes and unlinks that name itself.
    """

    def __init__(self, assoc: Any, limits: ReceiveLimits) -> None:
        super().__init__(assoc)
        self.limits = limits

    def receive_primitive(self, primitive: P_DATA) -> None:
        pdvs = primitive.presentation_data_value_list
        if len(pdvs) == 1:
            self._receive_one(primitive)
            return
        for pdv in pdvs:  # command and data set fragments may share a PDU: one at a time
            single = P_DATA()
            single.presentation_data_value_list = [pdv]
            self._receive_one(single)

    def _receive_one(self, primitive: P_DATA) -> None:
        context_id, data = primitive.presentation_data_value_list[0]
        msg = self.message
        if (
            msg is not None
            and isinstance(msg, C_STORE_RQ)
            and not data[0] & 1
            and msg._data_set_file is None
        ):
            cs = msg.command_set
            assoc = self.assoc
            cx = assoc._accepted_cx.get(context_id)
            meta = file_meta_bytes(
                _ascii(cs.AffectedSOPClassUID),
                _ascii(cs.AffectedSOPInstanceUID),
                str(cx.transfer_syntax[0]) if cx is not None else "",
                _ascii(assoc.requestor.ae_title).strip(),
            )
            incoming = IncomingFile(self.limits.incoming_dir, meta, self.limits.max_instance_bytes,
                                    self.limits.writeback)
            msg._data_set_file = incoming  # type: ignore[assignment]
            msg._data_set_path = Path(incoming.name)
        super().receive_primitive(primitive)

    def get_msg(self, block: bool = False) -> Any:
        """The association reactor asks without blocking, then naps 1 ms: wait on the queue instead,
        so a message is served as soon as its last fragment is in. An idle association wakes every
        :data:`IDLE_WAIT` (its timers), not every millisecond: four idle threads waking
        a thousand times a second each held the interpreter lock that the busy ones wait for."""
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(timeout=IDLE_WAIT)
        except queue.Empty:
            return None, None

    def discard_partial(self) -> None:
        """After the association ended: remove a data set whose last fragment never came."""
        msg = self.message
        incoming = getattr(msg, "_data_set_file", None) if msg is not None else None
        if isinstance(incoming, IncomingFile):
            incoming.remove()


class BoundedSocket(AssociationSocket):
    """An AssociationSocket whose PDU reads have a deadline and a length limit (see module doc)."""

    limits: ReceiveLimits
    peer: str
    wakeup: Wakeup

    @property
    def ready(self) -> bool:
        """Data to read: waits up to :data:`IDLE_WAIT` for the socket, returning early (False)
        when a primitive was queued for sending or the DUL is told to stop (pynetdicom's own check
        does not wait)."""
        sock = self.socket
        if sock is None or self._is_connected is False:
            time.sleep(REACTOR_WAIT)  # the reactor loop no longer naps itself: no busy loop
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: select cannot see them
        try:
            readable, _, _ = select.select([sock, self.wakeup.reader], [], [], IDLE_WAIT)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        if self.wakeup.reader in readable:
            self.wakeup.drain()
        return sock in readable

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        if nr_bytes > self.limits.max_pdu_read:
            log_event(log, "connection.refused_pdu", logging.WARNING, peer=self.peer, pdu_bytes=nr_bytes,
                      limit=self.limits.max_pdu_read)
            return bytearray()  # pynetdicom: PDU shorter than announced -> transport closed (Evt17)
        established = self.assoc.is_established
        timeout = self.limits.network_timeout if established else self.limits.acse_timeout
        deadline = time.monotonic() + timeout
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        got = 0
        try:
            while got < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                n = sock.recv_into(view[got:], nr_bytes - got)
                if not n:
                    break  # peer closed
                got += n
                if _TCP_QUICKACK is not None:
                    try:
                        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                    except OSError:
                        pass
        except TimeoutError:
            log_event(
                log,
                "connection.timeout",
                logging.WARNING,
                peer=self.peer,
                stage="association" if established else "association-request",
                seconds=timeout,
                pdu_bytes_expected=nr_bytes,
                pdu_bytes_received=got,
            )
        except OSError:
            pass  # reset by the peer: what was read is returned, pynetdicom closes
        finally:
            view.release()
        if got < nr_bytes:
            del buffer[got:]
            if not established:
                self._request_never_came()
        return buffer

    def _request_never_came(self) -> None:
        """End the association's wait for an A-ASSOCIATE-RQ that can no longer come.

        pynetdicom's acceptor waits for the request on the DUL's queue for the whole ACSE timeout,
        and a transport closed in Sta2 puts nothing there (PS3.8 AA-5), so a TCP probe (a load
        balancer's health check, a port scan) held its connection slot for 30 s. ``None`` is what
        that wait returns on its timeout: the association ends and its slot is released at once.
        """
        dul = self.assoc.dul
        if dul.state_machine.current_state == "Sta2":
            dul.to_user_queue.put(None)

    def send(self, bytestream: bytes) -> None:
        if self.socket is not None:
            try:
                self.socket.settimeout(self.limits.network_timeout)  # a peer that never reads
            except OSError:
                pass
        super().send(bytestream)


class NodeRequestHandler(RequestHandler):
    """One accepted connection: the association with our socket and DIMSE provider; the thread
    stays until the association ends, so the server can count connections per host."""

    server: NodeServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        limits = self.server.limits
        sock = assoc.dul.socket
        assert sock is not None  # set by _create_association
        sock.__class__ = BoundedSocket  # same object and state, bounded reads (no second Evt5)
        bounded = cast(BoundedSocket, sock)
        bounded.limits = limits
        bounded.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        bounded.wakeup = Wakeup()
        outgoing = _WakingQueue(bounded.wakeup)
        while not assoc.dul.to_provider_queue.empty():
            outgoing.put(assoc.dul.to_provider_queue.get())
        assoc.dul.to_provider_queue = outgoing
        assoc.dul._run_loop_delay = 0  # the socket's ready() waits instead (see the module doc)
        dul = assoc.dul
        stop_dul = dul.stop_dul

        def stop_dul_now() -> bool:
            """pynetdicom's stop (in Sta1: flag, then wait for the thread), with the DUL thread woken
            from ready() once the flag is up, so the wait is not IDLE_WAIT."""
            if dul.state_machine.current_state == "Sta1":
                dul._kill_thread = True
                bounded.wakeup.signal()
            return bool(stop_dul())

        dul.stop_dul = stop_dul_now  # type: ignore[method-assign]
        assoc.dimse = ReceivingDIMSE(assoc, limits)
        to_user = _WakingUserQueue(assoc.dimse.msg_queue)
        while not assoc.dul.to_user_queue.empty():
            to_user.put(assoc.dul.to_user_queue.get())
        assoc.dul.to_user_queue = to_user
        return assoc

    def handle(self) -> None:
        assoc = None
        try:
            if self.server.ssl_context is not None and not self._handshake():
                return
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            if not self.server.start_association(assoc):
                # the node is stopping: closed unanswered (pynetdicom's thread closes a request's
                # socket only on an error; an association closes its own)
                self.server.shutdown_request(self.request)
                return
            assoc.join()
        finally:
            if assoc is not None and isinstance(assoc.dimse, ReceivingDIMSE):
                assoc.dimse.discard_partial()
            if assoc is not None and isinstance(assoc.dul.socket, BoundedSocket):
                assoc.dul.socket.wakeup.close()
            self.server.release_host(str(self.client_address[0]))

    def _handshake(self) -> bool:
        """The TLS handshake, on this connection's own thread (NodeServer.get_request); False when
        it failed."""
        tls = self.server.tls_handshake(self.request)
        if tls is None:
            return False
        self.request = tls
        return True


class _SharedContexts(list):
    """The server's supported presentation contexts, handed to each association without a copy.

    pynetdicom deep-copies the server's contexts into every new association; with every Storage
    SOP Class supported (171 contexts of 16 transfer syntaxes) that copy took 14 ms of each
    association's setup. Negotiation only reads them (it builds new contexts for its answer), so
    each association gets the same items in a list of its own.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class NodeServer(ThreadedAssociationServer):
    """The association server with a per-host connection cap and TCP_NODELAY; it accepts on a
    socket the serve process bound when the AE was given one (node.listener_pool)."""

    daemon_threads = True
    limits: ReceiveLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._adopted = False
        self.refuser = Refuser(_RJ_LOCAL_LIMIT)
        self._refused: set[Any] = set()  # handed to the refuser; socketserver must not close them
        self._tls_refusals = threading.BoundedSemaphore(TLS_REFUSALS_IN_HANDSHAKE)
        self._closing = False
        self._starting = threading.Lock()  # start_association against stop_starting
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)

    def start_association(self, assoc: Any) -> bool:
        """Start a connection's association unless the server is closing (then False: the
        connection is closed unanswered).

        A connection accepted just before the stop gets its association a moment later, on its own
        thread: started after the stop's sweep of unestablished associations, it waited out the
        ACSE timeout, and its DUL thread (not a daemon) kept a stopping listener process alive for
        30 s. Under one lock with :meth:`stop_starting`, an association is either started before
        the sweep, which then sees it, or not at all."""
        with self._starting:
            if self._closing:
                return False
            assoc.start()
            return True

    def stop_starting(self) -> None:
        """No association starts after this returns (see :meth:`start_association`)."""
        with self._starting:
            self._closing = True

    def server_bind(self) -> None:
        """Bind, or adopt the listening socket of this transport that the serve process bound.

        Several listener processes then accept on one socket, and the kernel gives each new
        connection to the first that asks: a process busy with its associations asks later, so
        new ones go to an idle one. The socket is non-blocking: the processes that lose the race
        for a connection return to their loop instead of waiting in ``accept``."""
        transport = "tls" if self.ssl_context is not None else "tcp"
        adopted = (getattr(self.ae, "listening_sockets", None) or {}).get(transport)
        if adopted is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()  # the one socketserver made for binding
        adopted.setblocking(False)
        self.socket = adopted
        self.server_address = adopted.getsockname()
        self._adopted = True

    def server_activate(self) -> None:
        if not self._adopted:  # an adopted socket listens already
            super().server_activate()

    def server_close(self) -> None:
        """Close; an adopted socket only here: pynetdicom's ``shutdown(SHUT_RDWR)`` would stop the
        socket listening in every process that shares it."""
        self.refuser.close()
        if self._adopted and self.socket is not None:
            self.socket.close()
            return
        super().server_close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, without the TLS handshake pynetdicom does here: a peer slow to handshake (or
        silent) held the accept loop for the handshake timeout, and every other TLS peer of this
        process waited behind it. The connection's thread does it (NodeRequestHandler)."""
        client, address = cast(socket.socket, self.socket).accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        refusal = self.limits.slots.admit(host)
        if refusal is None:
            return True
        log_event(log, "connection.refused_limit", logging.WARNING, peer=host, limit=refusal.limit,
                  open_connections=refusal.open_connections, allowed=refusal.allowed)
        if self.ssl_context is None:
            self.refuser.refuse(request)  # read its A-ASSOCIATE-RQ, then answer (node.refusals)
        elif self._tls_refusals.acquire(blocking=False):
            threading.Thread(target=self._refuse_over_tls, args=(request,), name="tls-refusal",
                             daemon=True).start()
        else:
            request.close()  # more refusals in their handshake than allowed: closed unanswered
        self._refused.add(request)
        return False

    def _refuse_over_tls(self, request: socket.socket) -> None:
        """The rejection of a TLS connection goes over TLS: handshake first (this thread, bounded
        by the context's timeout), then the refuser."""
        try:
            tls = self.tls_handshake(request)
        finally:
            self._tls_refusals.release()
        if tls is not None:
            self.refuser.refuse(tls)

    def tls_handshake(self, request: socket.socket) -> ssl.SSLSocket | None:
        """The server side of the TLS handshake on an accepted socket; None when it failed
        (node.tls.ListenerContext has logged and audited it and closed the socket)."""
        try:
            return cast(ssl.SSLContext, self.ssl_context).wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return None

    def shutdown_request(self, request: Any) -> None:
        if request in self._refused:  # the refuser closes it once it has answered
            self._refused.discard(request)
            return
        super().shutdown_request(request)

    def release_host(self, host: str) -> None:
        self.limits.slots.release(host)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception while setting up a connection: one log line, not socketserver's traceback."""
        log.warning("connection setup failed for %s", client_address[0], exc_info=False)


class NodeAE(AE):
    """The node's AE: its servers are NodeServer with NodeRequestHandler."""

    limits: ReceiveLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listening_sockets: dict[str, socket.socket] = {}  # by transport, from start_listener

    def make_server(self, address: Any, ae_title: Any = None, contexts: Any = None, ssl_context: Any = None,
                    evt_handlers: Any = None, server_class: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("request_handler", NodeRequestHandler)
        server = cast(NodeServer, super().make_server(address, ae_title, contexts, ssl_context, evt_handlers,
                                                      server_class=NodeServer, **kwargs))
        server.limits = self.limits
        return server
