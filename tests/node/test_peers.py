"""node.peers: parsing [[peers]] and the (AE title, host) check."""

from __future__ import annotations

import ipaddress

import pytest

from node.config import parse_config
from node.errors import ConfigError
from node.peers import HostPattern, PeerTable


def test_empty_table_allows_everyone() -> None:
    table = PeerTable([])
    assert not table.enabled
    assert table.check("ANY", "10.9.9.9").allowed


def test_address_and_cidr() -> None:
    table = PeerTable([("ORTHANC", "10.1.2.3"), ("MODALITY", "192.168.7.0/24"), ("V6", "fd00::/64")])
    assert table.enabled and len(table) == 3
    assert table.check("ORTHANC", "10.1.2.3").allowed
    assert table.check("ORTHANC ", "10.1.2.3").allowed  # AE titles are space-padded on the wire
    assert table.check("MODALITY", "192.168.7.200").allowed
    assert table.check("V6", "fd00::17").allowed
    assert table.check("ORTHANC", "::ffff:10.1.2.3").allowed  # a dual-stack listener's view of IPv4
    no = table.check("ORTHANC", "10.1.2.4")
    assert not no.allowed and "'ORTHANC' is not allowed from 10.1.2.4 (allowed: 10.1.2.3)" in no.reason
    assert not table.check("MODALITY", "192.168.8.1").allowed
    unknown = table.check("STRANGER", "10.1.2.3")
    assert not unknown.allowed and "'STRANGER' is not a configured peer" in unknown.reason


def test_same_title_on_several_hosts() -> None:
    table = PeerTable([("PACS", "10.0.0.1"), ("PACS", "10.0.0.2")])
    assert table.check("PACS", "10.0.0.1").allowed and table.check("PACS", "10.0.0.2").allowed
    assert not table.check("PACS", "10.0.0.3").allowed


def test_host_names_resolve_and_are_cached() -> None:
    calls: list[str] = []

    def resolver(name: str) -> set:
        calls.append(name)
        return {ipaddress.ip_address("10.5.5.5")} if name == "pacs.hospital.example" else set()

    table = PeerTable([("PACS", "PACS.hospital.example."), ("GONE", "gone.example")], resolver=resolver)
    assert table.check("PACS", "10.5.5.5").allowed
    assert table.check("PACS", "10.5.5.5").allowed
    assert not table.check("PACS", "10.5.5.6").allowed
    assert calls == ["pacs.hospital.example"]
    assert not table.check("GONE", "10.5.5.5").allowed  # a name that does not resolve matches nothing


def test_localhost_resolves_for_real() -> None:
    table = PeerTable([("LOCAL", "localhost")])
    assert table.check("LOCAL", "127.0.0.1").allowed


@pytest.mark.parametrize("host", ["", "10.1.2.3/33", "not a host", "bad_name.example", "a:b"])
def test_bad_hosts_are_named(host: str) -> None:
    with pytest.raises(ConfigError, match=r"\[\[peers\]\] #1: host"):
        PeerTable([("PACS", host)])


def test_bad_titles_are_named() -> None:
    with pytest.raises(ConfigError, match=r"\[\[peers\]\] #2: ae_title"):
        PeerTable([("PACS", "10.0.0.1"), ("", "10.0.0.2")])


def test_host_pattern_kinds() -> None:
    assert HostPattern.parse("10.0.0.1").network == ipaddress.ip_network("10.0.0.1/32")
    assert HostPattern.parse("10.0.0.7/24").network == ipaddress.ip_network("10.0.0.0/24")
    assert HostPattern.parse("Pacs.Example").name == "pacs.example"


def test_peers_table_in_config() -> None:
    config = parse_config({"peers": [{"ae_title": "ORTHANC", "host": "10.1.2.3"}]})
    assert [(p.ae_title, p.host) for p in config.peers] == [("ORTHANC", "10.1.2.3")]
    with pytest.raises(ConfigError, match=r"\[\[peers\]\] #1: host 'nope/x'"):
        parse_config({"peers": [{"ae_title": "ORTHANC", "host": "nope/x"}]})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['port'\] in \[\[peers\]\] #1"):
        parse_config({"peers": [{"ae_title": "ORTHANC", "host": "10.1.2.3", "port": 1}]})
    with pytest.raises(ConfigError, match=r"peers must be an array of tables"):
        parse_config({"peers": {"ae_title": "ORTHANC"}})
