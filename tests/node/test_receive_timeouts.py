"""Timeouts at every stage of a connection and a per-host cap (half-open connections were never
closed and sixteen of them kept every legitimate sender out): raw sockets play the faulty peer,
pynetdicom the legitimate one, from another loopback address."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from nodekit import DX_PRESENTATION, make_dx, wait_for
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from test_scp import start_service

from node.service import NodeService

ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 3.0
PER_HOST = 4


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    service = start_service(
        tmp_path_factory.mktemp("timeouts"),
        acse_timeout=ACSE_TIMEOUT,
        network_timeout=NETWORK_TIMEOUT,
        max_associations=16,
        max_associations_per_host=PER_HOST,
    )
    yield service
    service.stop(timeout=10)


def half_open(port: int) -> socket.socket:
    """A connection that sends the first bytes of an A-ASSOCIATE-RQ (announcing 200 bytes), then
    nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(struct.pack(">BBL", 0x01, 0x00, 200) + b"\x00\x01\x00\x00CXRNODE")
    return sock


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - start


def legit_ae() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(DX_PRESENTATION, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def test_partial_association_request_is_closed_after_acse_timeout(node: NodeService) -> None:
    sock = half_open(node.config.node.port)
    waited = seconds_until_closed(sock, ACSE_TIMEOUT + 10)
    sock.close()
    assert waited < ACSE_TIMEOUT + 2, waited


@pytest.mark.slow  # over ~3 s: make test runs it
def test_partial_pdata_is_closed_after_network_timeout(node: NodeService) -> None:
    assoc = legit_ae().associate("127.0.0.1", node.config.node.port, ae_title="CXRNODE")
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    start = time.monotonic()
    # A P-DATA-TF announcing 1000 bytes, 10 of them sent: the node must not wait for ever.
    raw.sendall(struct.pack(">BBL", 0x04, 0x00, 1000) + b"\x00" * 10)
    wait_for(lambda: not assoc.is_established, timeout=NETWORK_TIMEOUT + 10, what="association closed")
    waited = time.monotonic() - start
    assert waited < NETWORK_TIMEOUT + 3, waited


@pytest.mark.slow  # waits out the half-open sockets' ACSE timeout: ~4 s in make check; make test runs it
def test_legitimate_sender_gets_through_while_20_half_open_sockets_are_held(node: NodeService) -> None:
    port = node.config.node.port
    held = [half_open(port) for _ in range(20)]
    try:
        time.sleep(0.5)  # let the node accept (or refuse) every one of them
        start = time.monotonic()
        assoc = legit_ae().associate("127.0.0.1", port, ae_title="CXRNODE", bind_address=("127.0.0.2", 0))
        waited = time.monotonic() - start
        assert assoc.is_established
        ds = make_dx(generate_uid())
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        print(f"legitimate sender from 127.0.0.2 waited {waited * 1000:.0f} ms for its association "
              f"while 20 half-open sockets from 127.0.0.1 were held")
        assert waited < ACSE_TIMEOUT, waited
        assert node.repo.find_instance(ds.SOPInstanceUID) is not None
        # a sender from the abusive host itself gets in once the node dropped the half-open ones
        start = time.monotonic()
        deadline = start + ACSE_TIMEOUT + 10
        while True:
            assoc = legit_ae().associate("127.0.0.1", port, ae_title="CXRNODE")
            if assoc.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert time.monotonic() - start < ACSE_TIMEOUT + 3
    finally:
        for sock in held:
            sock.close()
