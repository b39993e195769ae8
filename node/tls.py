"""DICOM TLS (PS3.15 Annex B): SSL contexts for the listener and for destinations, start-up checks.

Both sides follow the BCP 195 TLS Secure Transport Connection Profiles (PS3.15 B.9 and the
non-downgrading profile B.10, which dcmtk's ``+tls`` uses by default): TLS 1.2 or later, and
on TLS 1.2 only the AEAD ECDHE/DHE suites those profiles name (TLS 1.3 suites are AEAD by
definition). The listener asks for a client certificate signed by ``tls_ca_certificates``
when that bundle is configured (mutual authentication, B.9: "the peer's identity is verified
by its certificate"); a destination's certificate is always verified, host name included.

A certificate or key problem is found at start-up, not at the first association: a missing
file, a key that does not belong to its certificate, or a certificate outside its validity
period raises :class:`~node.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import Destination, NodeConfig
from node.errors import ConfigError

log = logging.getLogger("node.scp")

# BCP 195 (RFC 7525 4.2, RFC 9325 4.2) suites for TLS 1.2, as PS3.15 B.9/B.10 list them,
# in OpenSSL's names; ECDHE first (forward secrecy without DH parameter files).
BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

HandshakeFailure = Callable[[str, str], None]  # (peer host, reason)


@dataclass(frozen=True)
class TlsPeer:
    """What the TLS layer knows about the other side of an association (for logs and audit)."""

    version: str
    cipher: str
    subject: str  # the peer certificate's subject (e.g. "CN=orthanc"), "" without a certificate


class ListenerContext(ssl.SSLContext):
    """The listener's SSLContext: a bounded handshake, and every refused handshake reported.

    The node wraps each accepted socket with ``wrap_socket(sock, server_side=True)`` on the
    connection's own thread (node.scp_transport.NodeRequestHandler; pynetdicom would do it in the
    accept loop and drop a failure silently). Overriding ``wrap_socket`` gives the handshake a
    timeout (a client that connects and sends nothing holds its thread no longer) and lets the
    node log and audit the refusal (a plain-TCP client, a certificate from another CA, no
    certificate).
    """

    handshake_timeout: float = 10.0
    on_failure: HandshakeFailure | None = None

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """The handshake, bounded; a connection closed before its first byte is no refusal.

        A TCP health check or port scan on the TLS port connects and closes without sending
        anything: that attempted no authentication, so it leaves a debug line, not a Security
        Alert in the audit trail (a load balancer probing every 10 s would write 8,640 a day).
        """
        previous = sock.gettimeout()
        host = _peer_host(sock)
        sock.settimeout(self.handshake_timeout)
        try:
            probe = not _peek(sock)
            if not probe:
                wrapped = super().wrap_socket(sock, *args, **kwargs)
        except (OSError, ValueError) as exc:
            if self.on_failure is not None:
                self.on_failure(host, _handshake_reason(exc))
            sock.close()
            raise
        if probe:
            log.debug("connection.probe peer=%s transport=tls", host)
            sock.close()
            raise ConnectionAbortedError("closed before the TLS handshake")
        wrapped.settimeout(previous)
        return wrapped


def _peek(sock: socket.socket) -> bytes:
    """The first byte the peer sent, left in place; b"" when it closed (or reset) without one."""
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except ConnectionResetError:
        return b""


def _peer_host(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc.__class__.__name__}: {exc}"


def _restrict(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE


def listener_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None,
    *,
    handshake_timeout: float = 10.0,
    on_failure: HandshakeFailure | None = None,
) -> ListenerContext:
    """The SSLContext of the TLS listener; with ``ca_certificates`` a client certificate
    signed by that bundle is required (mutual TLS), without it any client may connect."""
    check_key_pair(certificate, private_key, "[node].tls_certificate", "[node].tls_private_key")
    context = ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    _restrict(context)
    context.load_cert_chain(certificate, private_key)
    if ca_certificates is not None:
        _load_ca(context, ca_certificates, "[node].tls_ca_certificates")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    context.handshake_timeout = handshake_timeout
    context.on_failure = on_failure
    return context


def destination_context(
    name: str,
    ca_certificates: Path | None,
    certificate: Path | None = None,
    private_key: Path | None = None,
) -> ssl.SSLContext:
    """The SSLContext for associations to destination ``name``: the server certificate is
    verified against ``ca_certificates`` (the system store when None) and must name the host
    the node connects to; ``certificate``/``private_key`` are presented when the peer asks
    for a client certificate (dcmtk ``storescp +tls`` does by default)."""
    where = f"destination {name!r}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    _restrict(context)
    if ca_certificates is not None:
        _load_ca(context, ca_certificates, f"{where}: tls_ca_certificates")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (certificate is None) != (private_key is None):
        raise ConfigError(f"{where}: tls_certificate and tls_private_key go together; set both or neither")
    if certificate is not None and private_key is not None:
        check_key_pair(certificate, private_key, f"{where}: tls_certificate", f"{where}: tls_private_key")
        context.load_cert_chain(certificate, private_key)
    return context


def node_listener_context(config: NodeConfig, on_failure: HandshakeFailure | None = None) -> ListenerContext:
    """The listener context from ``[node] tls_*`` (paths resolved like every path of the file)."""
    n = config.node
    return listener_context(
        config.resolve_path(n.tls_certificate),
        config.resolve_path(n.tls_private_key),
        config.resolve_path(n.tls_ca_certificates) if n.tls_ca_certificates else None,
        handshake_timeout=min(10.0, n.acse_timeout),
        on_failure=on_failure,
    )


def node_destination_context(config: NodeConfig, dest: Destination) -> ssl.SSLContext:
    """The client context of a ``tls = true`` destination, from its ``tls_*`` keys."""
    return destination_context(
        dest.name,
        config.resolve_path(dest.tls_ca_certificates) if dest.tls_ca_certificates else None,
        config.resolve_path(dest.tls_certificate) if dest.tls_certificate else None,
        config.resolve_path(dest.tls_private_key) if dest.tls_private_key else None,
    )


def _load_ca(context: ssl.SSLContext, path: Path, setting: str) -> None:
    _require_file(path, setting)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(f"{setting}: {path} holds no usable PEM certificate ({exc.reason or exc})") from exc


def _require_file(path: Path, setting: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{setting}: file not found: {path}")


def check_key_pair(certificate: Path, private_key: Path, cert_setting: str, key_setting: str) -> None:
    """Start-up check of a certificate and its key: both exist, the key belongs to the
    certificate, and the certificate is within its validity period now."""
    _require_file(certificate, cert_setting)
    _require_file(private_key, key_setting)
    check_validity(certificate, cert_setting)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_cert_chain(certificate, private_key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{key_setting}: the private key {private_key} does not match the certificate {certificate}"
            ) from exc
        raise ConfigError(
            f"{cert_setting} / {key_setting}: cannot load {certificate} with {private_key}: "
            f"{exc.reason or exc}"
        ) from exc


def certificate_dates(certificate: Path) -> tuple[float, float]:
    """(notBefore, notAfter) of a PEM certificate, as POSIX times.

    The standard library has no public X.509 parser; ``_ssl._test_decode_cert`` is the decoder
    behind ``SSLSocket.getpeercert()`` (the same dictionary), and it is read only here.
    """
    try:
        decoded = ssl._ssl._test_decode_cert(str(certificate))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{certificate}: not a PEM certificate ({exc})") from exc
    return ssl.cert_time_to_seconds(decoded["notBefore"]), ssl.cert_time_to_seconds(decoded["notAfter"])


def check_validity(certificate: Path, setting: str, now: float | None = None) -> None:
    """A certificate outside its validity period stops start-up (peers would refuse it)."""
    not_before, not_after = certificate_dates(certificate)
    now = time.time() if now is None else now
    if now > not_after:
        raise ConfigError(f"{setting}: the certificate {certificate} expired on {_utc(not_after)}")
    if now < not_before:
        raise ConfigError(f"{setting}: the certificate {certificate} is not valid before {_utc(not_before)}")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


# getpeercert() spells attribute types out; logs and audit use the RFC 4514 short names.
_RDN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
              "localityName": "L", "stateOrProvinceName": "ST", "domainComponent": "DC"}


def tls_peer(sock: object) -> TlsPeer | None:
    """TLS facts of an association's socket (None for plain TCP)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cipher = sock.cipher()
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    rdns: tuple[tuple[tuple[str, str], ...], ...] = cert.get("subject", ())
    subject = ",".join(f"{_RDN_NAMES.get(k, k)}={v}" for rdn in rdns for k, v in rdn)
    return TlsPeer(version=sock.version() or "", cipher=cipher[0] if cipher else "", subject=subject)


def check_tls_files(config: NodeConfig) -> None:
    """Start-up check of every certificate and key the configuration names (the listener's and
    each ``tls = true`` destination's): raises ConfigError naming the file before anything
    listens, so ``serve`` stops with the reason instead of failing at the first association."""
    if config.node.tls_port > 0:
        node_listener_context(config)
    for dest in config.destinations:
        if dest.tls:
            node_destination_context(config, dest)
