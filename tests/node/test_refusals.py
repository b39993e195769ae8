"""node.refusals: a connection over a limit is answered after its A-ASSOCIATE-RQ, over real TCP.

The peer here is a raw socket, so the order of bytes on the wire is what is checked: nothing
before the request is complete, then the A-ASSOCIATE-RJ, then an orderly close (FIN, not reset).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from nodekit import wait_for

from node.refusals import Refuser

REJECT = struct.pack(">BBLBBBB", 0x03, 0x00, 4, 0x00, 0x02, 0x03, 0x02)
BODY = bytes(range(256)) * 4  # stands for the RQ's variable items: only the length is read


def _request(body: bytes = BODY) -> bytes:
    return struct.pack(">BBL", 0x01, 0x00, len(body)) + body


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(peer, accepted): both ends of one loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        peer = socket.create_connection(server.getsockname(), timeout=5)
        accepted, _ = server.accept()
    yield peer, accepted
    peer.close()


def _read_all(peer: socket.socket) -> bytes:
    """Everything until the node's FIN; a reset fails the test (ConnectionResetError)."""
    data = b""
    while chunk := peer.recv(4096):
        data += chunk
    return data


def test_the_rejection_follows_the_whole_request_then_an_orderly_close(pair) -> None:  # type: ignore[no-untyped-def]
    peer, accepted = pair
    refuser = Refuser(REJECT, wait_for_request=5, linger=5)
    try:
        refuser.refuse(accepted)
        request = _request()
        peer.sendall(request[:500])  # header and part of the body
        peer.settimeout(0.3)
        with pytest.raises(TimeoutError):
            peer.recv(100)  # nothing before the request is complete (PS3.8 9.2, Sta2)
        peer.settimeout(5)
        peer.sendall(request[500:])
        assert _read_all(peer) == REJECT
        assert refuser.pending() == 1  # kept, half closed, until the peer closes
        peer.close()
        wait_for(lambda: refuser.pending() == 0, 5, what="the refused socket closed")
    finally:
        refuser.close()


def test_a_peer_that_sends_nothing_is_closed_without_an_answer(pair) -> None:  # type: ignore[no-untyped-def]
    peer, accepted = pair
    refuser = Refuser(REJECT, wait_for_request=0.3, linger=5)
    try:
        started = time.monotonic()
        refuser.refuse(accepted)
        assert _read_all(peer) == b""
        assert 0.25 < time.monotonic() - started < 4
        # the count drops just after the close the peer has seen
        wait_for(lambda: refuser.pending() == 0, 2, what="the silent connection dropped")
    finally:
        refuser.close()


def test_what_is_not_an_association_request_is_closed_unanswered(pair) -> None:  # type: ignore[no-untyped-def]
    peer, accepted = pair
    refuser = Refuser(REJECT)
    try:
        refuser.refuse(accepted)
        peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert _read_all(peer) == b""
    finally:
        refuser.close()


def test_over_max_pending_the_answer_is_sent_at_once(pair) -> None:  # type: ignore[no-untyped-def]
    peer, accepted = pair
    refuser = Refuser(REJECT, max_pending=0)
    try:
        refuser.refuse(accepted)
        assert _read_all(peer) == REJECT
        assert refuser.pending() == 0
    finally:
        refuser.close()


def test_closing_answers_what_it_holds_and_ends_its_thread(pair) -> None:  # type: ignore[no-untyped-def]
    peer, accepted = pair
    refuser = Refuser(REJECT, wait_for_request=60)
    before = {t for t in threading.enumerate() if t.name == "refusals"}
    refuser.refuse(accepted)
    wait_for(lambda: refuser.pending() == 1, 5, what="the refusal taken")
    (thread,) = {t for t in threading.enumerate() if t.name == "refusals"} - before
    refuser.close(timeout=5)
    assert _read_all(peer) == REJECT
    assert refuser.pending() == 0
    assert not thread.is_alive()
