"""Peers bound to their hosts: the ``[[peers]]`` table and the check made at association time.

An AE title is a name, not a credential (PS3.15 B.1 leaves peer authentication to the
transport): any host that knows an allowed title could send. When ``[[peers]]`` lists any
entry, an association is accepted only if its Calling AE Title is listed with a host that
matches the address the TCP connection comes from. Otherwise the node answers
A-ASSOCIATE-RJ rejected-permanent, service-user, reason 3 "calling-AE-title-not-recognized"
(PS3.8 9.3.4) and logs and audits the title with the host.

A host is an IP address (``10.1.2.3``, ``fd00::7``), a CIDR range (``10.1.2.0/24``) or a host
name, resolved when an association arrives (cached for ``resolve_ttl`` seconds, so a changed
DNS record is picked up without a restart).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from node.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], set[IPAddress]]

_HOSTNAME_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _normalise(address: str) -> IPAddress | None:
    """An address as the listener reports it; IPv4-mapped IPv6 (a dual-stack socket) as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def resolve(name: str) -> set[IPAddress]:
    """Every address a host name resolves to (empty if it does not resolve)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return set()
    found: set[IPAddress] = set()
    for info in infos:
        ip = _normalise(str(info[4][0]))
        if ip is not None:
            found.add(ip)
    return found


@dataclass(frozen=True)
class HostPattern:
    """One ``host`` value of ``[[peers]]``: exactly one of network / name is set."""

    text: str
    network: IPNetwork | None = None  # an address is a /32 (/128) network
    name: str = ""

    @classmethod
    def parse(cls, text: str, where: str = "[[peers]]") -> HostPattern:
        value = text.strip()
        if not value:
            raise ConfigError(f"{where}: host is empty; give an IP address, a CIDR range or a host name")
        try:
            return cls(value, network=ipaddress.ip_network(value, strict=False))
        except ValueError:
            pass
        labels = value.lower().rstrip(".").split(".")
        if not all(0 < len(label) <= 63 and set(label) <= _HOSTNAME_LABEL for label in labels):
            raise ConfigError(
                f"{where}: host {value!r} is neither an IP address, a CIDR range nor a host name"
            )
        return cls(value, name=value.lower().rstrip("."))


@dataclass(frozen=True)
class PeerDecision:
    allowed: bool
    reason: str = ""


class PeerTable:
    """The (AE title, host) pairs allowed to associate; an empty table allows every pair."""

    def __init__(
        self,
        peers: Sequence[tuple[str, str]],
        *,
        resolver: Resolver = resolve,
        resolve_ttl: float = 300.0,
    ) -> None:
        self._entries: dict[str, list[HostPattern]] = {}
        for i, (ae_title, host) in enumerate(peers):
            where = f"[[peers]] #{i + 1}"
            title = ae_title.strip()
            if not 0 < len(title) <= 16 or "\\" in title:
                raise ConfigError(
                    f"{where}: ae_title must be 1-16 characters without backslash, got {ae_title!r}"
                )
            self._entries.setdefault(title, []).append(HostPattern.parse(host, where))
        self._resolver = resolver
        self._ttl = resolve_ttl
        self._cache: dict[str, tuple[float, set[IPAddress]]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return sum(len(hosts) for hosts in self._entries.values())

    def check(self, calling_aet: str, address: str) -> PeerDecision:
        """May ``calling_aet`` associate from ``address`` (the TCP peer's IP address)?"""
        if not self._entries:
            return PeerDecision(True)
        title = calling_aet.strip()
        hosts = self._entries.get(title)
        if hosts is None:
            return PeerDecision(False, f"calling AE title {title!r} is not a configured peer")
        ip = _normalise(address)
        if ip is None:
            return PeerDecision(False, f"peer address {address!r} is not an IP address")
        for pattern in hosts:
            if self._matches(pattern, ip):
                return PeerDecision(True)
        allowed = ", ".join(p.text for p in hosts)
        return PeerDecision(
            False, f"calling AE title {title!r} is not allowed from {ip} (allowed: {allowed})"
        )

    def _matches(self, pattern: HostPattern, ip: IPAddress) -> bool:
        if pattern.network is not None:
            return ip.version == pattern.network.version and ip in pattern.network
        return ip in self._addresses(pattern.name)

    def _addresses(self, name: str) -> set[IPAddress]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
        addresses = self._resolver(name)
        with self._lock:
            self._cache[name] = (now, addresses)
        return addresses


def reject_calling_aet(assoc: Any) -> None:
    """Answer an association request with A-ASSOCIATE-RJ rejected-permanent, service-user,
    reason 3 calling-AE-title-not-recognized (PS3.8 9.3.4), from an EVT_REQUESTED handler.

    These are the steps pynetdicom's own acceptor negotiation takes for a calling AE title
    outside ``AE.require_calling_aet`` (which cannot look at the host): send the rejection,
    notify EVT_REJECTED handlers, stop the association's DUL.
    """
    primitive = assoc.requestor.primitive
    assoc.requestor.ae_title = primitive.calling_ae_title  # negotiation, which sets it, is skipped
    assoc.acse.send_reject(0x01, 0x01, 0x03)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
