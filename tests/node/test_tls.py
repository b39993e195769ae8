"""node.tls: the BCP 195 contexts on real loopback associations, and the start-up checks."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from tlskit import Pki, make_pki

from node.config import parse_config
from node.errors import ConfigError
from node.tls import (
    BCP195_CIPHERS,
    check_key_pair,
    destination_context,
    listener_context,
    node_destination_context,
    node_listener_context,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """A Verification SCP behind the node's listener context (mutual TLS); yields its port and
    the handshake failures it reported."""
    failures: list[tuple[str, str]] = []
    ctx = listener_context(pki.node.cert, pki.node.key, pki.ca.cert, handshake_timeout=5,
                           on_failure=lambda host, reason: failures.append((host, reason)))
    ae = AE("TLSSCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=ctx)
    try:
        yield server.server_address[1], failures
    finally:
        server.shutdown()


def _echo(port: int, ctx: ssl.SSLContext | None, hostname: str = "localhost") -> bool:
    ae = AE("TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    kwargs = {"tls_args": (ctx, hostname)} if ctx is not None else {}
    assoc = ae.associate("127.0.0.1", port, ae_title="TLSSCP", **kwargs)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def test_mutual_tls_accepts_a_client_of_the_ca(pki: Pki, tls_server: tuple[int, list]) -> None:
    port, failures = tls_server
    ctx = destination_context("scp", pki.ca.cert, pki.client.cert, pki.client.key)
    assert _echo(port, ctx)
    assert failures == []


@pytest.mark.parametrize("who", ["rogue", "no-certificate", "plain"])
def test_listener_refuses_others(pki: Pki, tls_server: tuple[int, list], who: str) -> None:
    port, failures = tls_server
    if who == "rogue":
        ctx: ssl.SSLContext | None = destination_context("scp", pki.ca.cert, pki.rogue_client.cert,
                                                         pki.rogue_client.key)
    elif who == "no-certificate":
        ctx = destination_context("scp", pki.ca.cert)
    else:
        ctx = None
    assert not _echo(port, ctx)
    # the peer may see the server's alert before the server's handshake thread records the failure
    wait_for(lambda: failures, 10, what="the refused handshake recorded")
    assert failures[0][0] == "127.0.0.1"
    if who == "rogue":
        assert "certificate verification failed" in failures[0][1]


def test_server_certificate_must_name_the_host(pki: Pki, tls_server: tuple[int, list]) -> None:
    port, _failures = tls_server
    ctx = destination_context("scp", pki.ca.cert, pki.client.cert, pki.client.key)
    assert _echo(port, ctx, hostname="127.0.0.1")  # subjectAltName IP
    assert not _echo(port, ctx, hostname="pacs.example.org")


def test_server_certificate_from_another_ca_is_refused(pki: Pki, tls_server: tuple[int, list]) -> None:
    port, _failures = tls_server
    ctx = destination_context("scp", pki.rogue_ca.cert, pki.client.cert, pki.client.key)
    assert not _echo(port, ctx)


def test_weak_protocols_and_suites_are_refused(pki: Pki, tls_server: tuple[int, list]) -> None:
    port, _failures = tls_server
    ctx = listener_context(pki.node.cert, pki.node.key, pki.ca.cert)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and tls12 <= set(BCP195_CIPHERS.split(":"))
    # a TLS 1.2 client offering only a CBC suite (outside BCP 195) gets no handshake
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.load_verify_locations(pki.ca.cert)
    weak.load_cert_chain(pki.client.cert, pki.client.key)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    assert not _echo(port, weak)


def test_without_ca_bundle_no_client_certificate_is_asked(pki: Pki) -> None:
    ctx = listener_context(pki.node.cert, pki.node.key, None)
    assert ctx.verify_mode == ssl.CERT_NONE


def test_missing_files_are_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=f"tls_certificate: file not found: {missing}"):
        listener_context(missing, pki.node.key, None)
    with pytest.raises(ConfigError, match=f"tls_private_key: file not found: {missing}"):
        listener_context(pki.node.cert, missing, None)
    with pytest.raises(ConfigError, match=f"tls_ca_certificates: file not found: {missing}"):
        listener_context(pki.node.cert, pki.node.key, missing)
    with pytest.raises(ConfigError, match=f"'pacs': tls_ca_certificates: file not found: {missing}"):
        destination_context("pacs", missing)


def test_key_not_matching_its_certificate_is_named(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=f"private key {pki.stray_key} does not match the certificate "
                                          f"{pki.node.cert}"):
        check_key_pair(pki.node.cert, pki.stray_key, "[node].tls_certificate", "[node].tls_private_key")


def test_expired_certificate_is_named(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=f"certificate {pki.expired.cert} expired on"):
        listener_context(pki.expired.cert, pki.expired.key, pki.ca.cert)
    with pytest.raises(ConfigError, match="destination 'pacs': tls_certificate: the certificate .* expired"):
        destination_context("pacs", pki.ca.cert, pki.expired.cert, pki.expired.key)


def test_not_a_certificate_is_named(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=f"{pki.node.key}: not a PEM certificate"):
        listener_context(pki.node.key, pki.node.key, None)
    with pytest.raises(ConfigError, match=f"{pki.node.key} holds no usable PEM certificate"):
        listener_context(pki.node.cert, pki.node.key, pki.node.key)


def test_config_paths_are_relative_to_the_config_file(pki: Pki) -> None:
    folder = pki.ca.cert.parent
    config = parse_config(
        {
            "node": {"tls_port": 2762, "tls_certificate": "node.pem", "tls_private_key": "node.key",
                     "tls_ca_certificates": "ca.pem"},
            "destinations": [{"name": "pacs", "tls": True, "tls_ca_certificates": "ca.pem",
                              "tls_certificate": "client.pem", "tls_private_key": "client.key"}],
        },
        base_dir=folder,
    )
    assert node_listener_context(config).verify_mode == ssl.CERT_REQUIRED
    assert node_destination_context(config, config.destinations[0]).check_hostname


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"node": {"tls_port": 2762}}, "tls_certificate and \\[node\\].tls_private_key must name"),
        ({"node": {"tls_port": 11112, "tls_certificate": "a", "tls_private_key": "b"}}, "must differ"),
        ({"node": {"tls_port": 70000}}, "tls_port must be 0"),
        ({"destinations": [{"tls": True, "tls_certificate": "a.pem"}]}, "go together"),
        ({"destinations": [{"tls_ca_certificates": "ca.pem"}]}, "tls = false"),
    ],
)
def test_tls_settings_are_checked(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)
