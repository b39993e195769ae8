"""DICOM TLS with real peers: dcmtk ``echoscu``/``storescu +tls`` into ``cxr-node serve``, a rogue
certificate and a plain client refused on the TLS port, a dcmtk ``storescp +tls`` destination (in its
default configuration: it asks for a client certificate and takes uncompressed syntaxes only) that
receives the SEG, SR and SC, the audit trail of all of it without PHI, and the start-up checks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from nodekit import REPO, NodeProcess, free_port, node_toml, wait_for, wait_port, which_or_fail, write_study
from outboxkit import audit_records, outbox_with_results
from tlskit import Pki, make_pki

from node.config import load_config
from node.service import open_repository

PHI = ("Test^Synthetic", "SYN001", "19700101", "Doe^Jane")  # nodekit.make_dx / factories names and dates
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([which_or_fail(tool), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def tls_args(pair_key: Path, pair_cert: Path, ca: Path) -> list[str]:
    return ["+tls", str(pair_key), str(pair_cert), "+cf", str(ca)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    which_or_fail("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class TlsNode:
    process: NodeProcess
    plain_port: int
    tls_port: int
    audit_path: Path

    def audit(self) -> list[dict]:
        return audit_records(self.audit_path)


@pytest.fixture(scope="module")
def node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    """``cxr-node serve`` with a plain port and a mutual-TLS port; paths relative to the config file."""
    work = tmp_path_factory.mktemp("tlsnode")
    for pair in (pki.node, pki.ca):
        (work / pair.cert.name).write_bytes(pair.cert.read_bytes())
    (work / pki.node.key.name).write_bytes(pki.node.key.read_bytes())
    plain, tls = free_port(), free_port()
    (work / "node.toml").write_text(node_toml(work / "var", plain, node={
        "tls_port": tls, "tls_certificate": "node.pem", "tls_private_key": "node.key",
        "tls_ca_certificates": "ca.pem"}))
    process = NodeProcess(work / "node.toml", plain, work / "node.log")
    process.start("--workers", "0")
    wait_for(lambda: f"port={tls} transport=tls" in process.log(), 30, what="TLS listener")
    try:
        yield TlsNode(process, plain, tls, work / "var" / "audit" / "audit.jsonl")
    finally:
        process.terminate()


def test_echoscu_over_mutual_tls(node: TlsNode, pki: Pki) -> None:
    out = dcmtk("echoscu", *tls_args(pki.client.key, pki.client.cert, pki.ca.cert), "-aet", "TLSECHO",
                "-aec", "CXRNODE", "127.0.0.1", str(node.tls_port))
    assert out.returncode == 0, out.stderr
    accepted = wait_for(lambda: [r for r in node.audit() if r["event"] == "security-alert"
                                 and r["active_participants"][0]["user_id"] == "TLSECHO"], 10,
                        what="association audit record")
    record = accepted[0]
    assert record["event_outcome_indicator"] == 0 and record["transport"] == "tls"
    assert record["tls"]["peer_certificate_subject"] == "CN=TESTSCU"
    assert record["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert record["active_participants"][0]["network_access_point_id"] == "127.0.0.1"


def test_storescu_over_mutual_tls_stores_and_audits_without_phi(node: TlsNode, pki: Pki,
                                                                 tmp_path: Path) -> None:
    files = write_study(tmp_path / "study", 2)
    out = dcmtk("storescu", *tls_args(pki.client.key, pki.client.cert, pki.ca.cert), "-aet", "TLSSTORE",
                "-aec", "CXRNODE", "127.0.0.1", str(node.tls_port), *map(str, files))
    assert out.returncode == 0, out.stderr
    uids = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)

    def received() -> list[dict]:
        return [r for r in node.audit() if r["event"] == "instances-transferred"
                and r["participant_objects"][0]["sop_classes"][0]["instance_uids"][0] in uids]

    # one record for the association's study, listing both instances
    (record,) = wait_for(received, 20, what="the association's audit record")
    assert record["event_action_code"] == "C" and record["event_outcome_indicator"] == 0
    assert record["transport"] == "tls"
    (study_object,) = record["participant_objects"]
    assert study_object["participant_object_id"] == study
    assert set(study_object["sop_classes"][0]["instance_uids"]) == uids
    assert study_object["sop_classes"][0]["number_of_instances"] == 2
    assert record["active_participants"][0]["user_id"] == "TLSSTORE"
    repo = open_repository(load_config(node.process.config_path))
    assert all(repo.find_instance(uid) is not None for uid in uids)
    text = node.audit_path.read_text() + node.process.log()
    assert not [p for p in PHI if p in text]


@pytest.mark.parametrize("who", ["rogue", "plain"])
def test_rogue_certificate_and_plain_client_are_refused_on_the_tls_port(node: TlsNode, pki: Pki,
                                                                        who: str) -> None:
    before = len(node.audit())
    args = tls_args(pki.rogue_client.key, pki.rogue_client.cert, pki.ca.cert) if who == "rogue" else []
    out = dcmtk("echoscu", *args, "-aet", "INTRUDER", "-aec", "CXRNODE", "-to", "5", "-ta", "5",
                "127.0.0.1", str(node.tls_port))
    assert out.returncode != 0
    refused = wait_for(lambda: [r for r in node.audit()[before:] if r["event"] == "security-alert"
                                and r["event_outcome_indicator"] == 4], 10, what="refusal audit record")
    record = refused[0]
    assert record["transport"] == "tls"
    assert record["active_participants"][0]["network_access_point_id"] == "127.0.0.1"
    if who == "rogue":
        assert "certificate verification failed" in record["event_outcome_description"]
    assert not [r for r in node.audit()[before:] if r["event_outcome_indicator"] == 0]
    assert "tls.refused" in node.process.log()


def test_a_tcp_probe_of_the_tls_port_is_no_security_alert(node: TlsNode) -> None:
    """A connection closed before its first byte (a health check, a port scan) attempted no
    authentication; the plain-DICOM client after it, which did, is the one alert."""
    before = len(node.audit())
    for _ in range(3):
        socket.create_connection(("127.0.0.1", node.tls_port), timeout=10).close()
    out = dcmtk("echoscu", "-aet", "PLAINTLS", "-aec", "CXRNODE", "-to", "5", "-ta", "5",
                "127.0.0.1", str(node.tls_port))
    assert out.returncode != 0
    alerts = wait_for(lambda: [r for r in node.audit()[before:] if r["event"] == "security-alert"], 10,
                      what="the plain client's alert")
    time.sleep(0.5)  # an alert written after it would show a probe counted
    assert len([r for r in node.audit()[before:] if r["event"] == "security-alert"]) == len(alerts) == 1
    assert "WRONG_VERSION_NUMBER" in alerts[0]["event_outcome_description"]


def test_silent_tls_connections_do_not_hold_up_other_tls_peers(node: TlsNode, pki: Pki) -> None:
    """Three connections that never send a ClientHello (more than the node has listener processes)
    wait out their handshake timeout (10 s) on their own threads; a TLS peer behind them is served
    at once, not after them."""
    silent = [socket.create_connection(("127.0.0.1", node.tls_port), timeout=30) for _ in range(3)]
    try:
        time.sleep(0.3)  # every one accepted
        started = time.monotonic()
        out = dcmtk("echoscu", *tls_args(pki.client.key, pki.client.cert, pki.ca.cert), "-aec", "CXRNODE",
                    "-to", "30", "127.0.0.1", str(node.tls_port))
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - started < 5
    finally:
        for sock in silent:
            sock.close()


def test_plain_port_stays_open_beside_tls(node: TlsNode) -> None:
    out = dcmtk("echoscu", "-aet", "PLAIN", "-aec", "CXRNODE", "127.0.0.1", str(node.plain_port))
    assert out.returncode == 0, out.stderr
    records = wait_for(lambda: [r for r in node.audit() if r["event"] == "security-alert"
                                and r["active_participants"][0]["user_id"] == "PLAIN"], 10, what="audit")
    assert records[0]["transport"] == "tcp" and "tls" not in records[0]


@pytest.mark.slow  # over ~3 s: make test runs it
def test_port_zero_turns_plain_tcp_off(pki: Pki, tmp_path: Path) -> None:
    plain, tls = free_port(), free_port()
    (tmp_path / "node.toml").write_text(node_toml(tmp_path / "var", 0, node={
        "tls_port": tls, "tls_certificate": str(pki.node.cert), "tls_private_key": str(pki.node.key)}))
    process = NodeProcess(tmp_path / "node.toml", tls, tmp_path / "node.log")
    process.start("--workers", "0")
    try:
        # no CA bundle: server-authenticated TLS; the node asks for no client certificate, so one
        # from another CA does not matter, while dcmtk still verifies the node's against ca.pem
        out = dcmtk("echoscu", *tls_args(pki.rogue_client.key, pki.rogue_client.cert, pki.ca.cert),
                    "-aec", "CXRNODE", "127.0.0.1", str(tls))
        assert out.returncode == 0, out.stderr
        assert "transport=tcp" not in process.log()
        out = dcmtk("echoscu", "-aec", "CXRNODE", "-to", "5", "127.0.0.1", str(plain))
        assert out.returncode != 0
    finally:
        process.terminate()


# -- a TLS destination ---------------------------------------------------------------------------
def test_storescp_tls_destination_receives_seg_sr_and_sc(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    # storescp in its default configuration plus TLS: client certificate required (-rc), uncompressed only
    scp = subprocess.Popen([which_or_fail("storescp"), *tls_args(pki.node.key, pki.node.cert, pki.ca.cert),
                            "-aet", "TLSDEST", "-od", str(received), "-uf", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, 30, scp)
        destination = {"name": "secure", "ae_title": "TLSDEST", "host": "127.0.0.1", "port": port,
                       "tls": True, "tls_ca_certificates": str(pki.ca.cert),
                       "tls_certificate": str(pki.client.cert), "tls_private_key": str(pki.client.key)}
        loop, objects, audit_path = outbox_with_results(tmp_path, destination)
        deadline = time.monotonic() + 60
        while loop.repo.status()["deliveries"]["sent"] < 3 and time.monotonic() < deadline:
            loop.run_once()
            time.sleep(0.2)
        assert loop.repo.status()["deliveries"] == {"pending": 0, "sent": 3, "failed": 0}
    finally:
        scp.terminate()
        scp.wait(15)
    got = {str(ds.SOPClassUID): ds for ds in map(pydicom.dcmread, received.iterdir())}  # "SR.<uid>" ...
    assert set(got) == {str(o.SOPClassUID) for o in objects} and {SEG, SC} <= set(got)
    for ds in objects:
        assert got[str(ds.SOPClassUID)].SOPInstanceUID == ds.SOPInstanceUID
    (record,) = [r for r in audit_records(audit_path) if r["event_action_code"] == "R"]
    assert record["event_outcome_indicator"] == 0 and record["transport"] == "tls"
    assert record["active_participants"][1]["user_id"] == "TLSDEST"
    assert sum(c["number_of_instances"] for c in record["participant_objects"][0]["sop_classes"]) == 3
    assert not [p for p in PHI if p in audit_path.read_text()]


def test_tls_destination_with_a_server_from_another_ca_fails(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    scp = subprocess.Popen([which_or_fail("storescp"), "+tls", str(pki.rogue_client.key),
                            str(pki.rogue_client.cert), "-ic", "-aet", "TLSDEST", "-od", str(tmp_path),
                            str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL)
    try:
        wait_port(port, 30, scp)
        destination = {"name": "secure", "ae_title": "TLSDEST", "host": "127.0.0.1", "port": port,
                       "tls": True, "tls_ca_certificates": str(pki.ca.cert)}
        loop, _objects, audit_path = outbox_with_results(tmp_path, destination)
        loop.run_once()
    finally:
        scp.terminate()
        scp.wait(15)
    assert loop.repo.status()["deliveries"]["sent"] == 0
    (record,) = [r for r in audit_records(audit_path) if r["event_action_code"] == "R"]
    assert record["event_outcome_indicator"] == 4 and "TLS" in record["event_outcome_description"]
    assert not list(tmp_path.glob("1.*"))


# -- start-up checks -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "mismatched", "expired", "destination-missing"])
def test_serve_stops_naming_the_file(pki: Pki, tmp_path: Path, case: str) -> None:
    cert, key = pki.node.cert, pki.node.key
    destinations = []
    if case == "missing":
        cert = tmp_path / "absent.pem"
    elif case == "mismatched":
        key = pki.stray_key
    elif case == "expired":
        cert, key = pki.expired.cert, pki.expired.key
    else:
        destinations = [{"name": "secure", "tls": True,
                         "tls_ca_certificates": str(tmp_path / "absent-ca.pem")}]
    (tmp_path / "node.toml").write_text(node_toml(tmp_path / "var", free_port(), destinations=destinations,
                                                  node={"tls_port": free_port(), "tls_certificate": str(cert),
                                                        "tls_private_key": str(key)}))
    command = [sys.executable, "-m", "node.cli.main", "serve", "--config", str(tmp_path / "node.toml"),
               "--workers", "0"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    expected = {"missing": f"file not found: {tmp_path / 'absent.pem'}",
                "mismatched": f"private key {pki.stray_key} does not match the certificate {pki.node.cert}",
                "expired": f"the certificate {pki.expired.cert} expired on",
                "destination-missing": f"file not found: {tmp_path / 'absent-ca.pem'}"}[case]
    assert expected in out.stderr, out.stderr
    assert not (tmp_path / "var").exists()  # stopped before creating anything
