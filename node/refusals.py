"""Refusing a connection over a limit in the order PS3.8 gives: read the A-ASSOCIATE-RQ, answer
A-ASSOCIATE-RJ, then close.

The acceptor answers once the request has arrived (PS3.8 9.2: in Sta2 it awaits the A-ASSOCIATE-RQ),
and a socket closed with the request still unread is reset, not closed (RFC 1122 4.2.2.13): a
Linux peer still reads what arrived before the reset, other systems may drop it with the
connection. dcmtk read the answer every time either way. (pynetdicom 3.0's requestor reports an
answer that comes back before its own thread has looked at the connection as an abort, whichever
SCP sends it: 16 of 200 against dcmtk ``storescp --refuse``; nothing on this side changes that.)

One thread serves every refused connection through a selector, so the accept loop never waits on
a peer. A peer that sends no request within ``wait_for_request`` seconds is closed without an
answer (the ARTIM timer's role, PS3.8 9.1.5). After the answer the connection is half closed and
kept until the peer closes it or ``linger`` seconds pass, so that nothing it still sends turns
the close into a reset before it has read the answer. At most ``max_pending`` refusals wait;
beyond that the answer is sent at once and the socket closed (a flood of connections over the
limit costs no more than it did).
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

A_ASSOCIATE_RQ = 0x01
PDU_HEADER_BYTES = 6  # PS3.8 9.3.1: type, reserved, 4-byte length
# An A-ASSOCIATE-RQ is a few KiB: a longer declared length is answered without reading it all.
MAX_REQUEST_BYTES = 1 << 20
_NOT_YET = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass
class _Refused:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    answered: bool = False


class Refuser:
    """Answers refused connections with ``reply`` (an A-ASSOCIATE-RJ PDU) on its own thread."""

    def __init__(self, reply: bytes, *, wait_for_request: float = 5.0, linger: float = 1.0,
                 max_pending: int = 64) -> None:
        self._reply = reply
        self._wait_for_request = wait_for_request
        self._linger = linger
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._handed_over: list[socket.socket] = []
        self._pending = 0  # handed over and not yet closed
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)  # a full buffer means a wake-up is pending already
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)

    def refuse(self, sock: socket.socket) -> None:
        """Take ``sock`` over: the caller must neither shut it down nor close it."""
        with self._lock:
            if self._closed or self._pending >= self._max_pending:
                answer_and_close(sock, self._reply)
                return
            self._pending += 1
            self._handed_over.append(sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="refusals", daemon=True)
                self._thread.start()
        self._wake()

    def pending(self) -> int:
        with self._lock:
            return self._pending

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking connections; the thread answers or closes what it holds and ends."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._selector.close()
            self._wake_read.close()
            self._wake_write.close()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"\0")
        except OSError:  # closed, or its buffer full of wake-ups already
            pass

    def _run(self) -> None:
        held: dict[socket.socket, _Refused] = {}
        while True:
            timeout = max(0.0, min(r.deadline for r in held.values()) - time.monotonic()) if held else None
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    if not self._take_handed_over(held):
                        return
                else:
                    self._readable(key.data, held)
            now = time.monotonic()
            for refused in [r for r in held.values() if r.deadline <= now]:
                self._drop(refused, held)

    def _take_handed_over(self, held: dict[socket.socket, _Refused]) -> bool:
        """Register what the accept loop handed over; False once closed with nothing held."""
        try:
            while self._wake_read.recv(4096):
                pass
        except _NOT_YET:
            pass
        with self._lock:
            fresh, self._handed_over = self._handed_over, []
            closed = self._closed
        deadline = time.monotonic() + self._wait_for_request
        for sock in fresh:
            refused = _Refused(sock, deadline)
            try:
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, refused)
            except (OSError, ValueError):
                self._drop(refused, held, registered=False)
                continue
            held[sock] = refused
            self._readable(refused, held)  # what arrived before it was registered
        if closed:
            for refused in list(held.values()):
                if not refused.answered:
                    self._answer(refused)
                self._drop(refused, held)
            return False
        return True

    def _readable(self, refused: _Refused, held: dict[socket.socket, _Refused]) -> None:
        """Read until the socket has nothing more: a TLS socket may hold decrypted bytes the
        selector does not see."""
        while refused.sock in held:
            try:
                chunk = refused.sock.recv(65536)
            except _NOT_YET:
                return
            except OSError:
                self._drop(refused, held)
                return
            if not chunk:  # the peer closed: after the answer, or without sending a request
                self._drop(refused, held)
                return
            if not refused.answered:
                self._received(refused, chunk, held)

    def _received(self, refused: _Refused, chunk: bytes, held: dict[socket.socket, _Refused]) -> None:
        refused.received += chunk
        if len(refused.received) < PDU_HEADER_BYTES:
            return
        if refused.received[0] != A_ASSOCIATE_RQ:
            self._drop(refused, held)  # not an association request: nothing to answer
            return
        length = int.from_bytes(refused.received[2:PDU_HEADER_BYTES], "big")
        if len(refused.received) >= PDU_HEADER_BYTES + length or length > MAX_REQUEST_BYTES:
            self._answer(refused)
            refused.deadline = time.monotonic() + self._linger
            refused.received.clear()

    def _answer(self, refused: _Refused) -> None:
        refused.answered = True
        try:
            refused.sock.send(self._reply)  # a few bytes into an empty send buffer
            refused.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _drop(self, refused: _Refused, held: dict[socket.socket, _Refused], registered: bool = True) -> None:
        if registered:
            try:
                self._selector.unregister(refused.sock)
            except (KeyError, ValueError):
                pass
        held.pop(refused.sock, None)
        refused.sock.close()
        with self._lock:
            self._pending -= 1


def answer_and_close(sock: socket.socket, reply: bytes) -> None:
    """Answer at once and close: for when no refusal thread may take the connection."""
    try:
        sock.settimeout(1.0)
        sock.sendall(reply)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
