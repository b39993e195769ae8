"""[[peers]] on a running node: the same AE title from another host is rejected (A-ASSOCIATE-RJ
rejected-permanent, service-user, calling-AE-title-not-recognized), logged and audited with the host.

Two loopback source addresses stand for two hosts: 127.0.0.1 and 127.0.0.2 (pynetdicom's
``associate(..., bind_address=("127.0.0.2", 0))``); dcmtk ``echoscu`` is the default peer.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from nodekit import NodeProcess, free_port, node_toml, wait_for, which_or_fail
from pynetdicom import AE
from pynetdicom.sop_class import Verification

PEERS = [("MODALITY", "127.0.0.1"), ("LOCALSCU", "localhost"), ("RANGE", "127.0.0.0/30")]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    work = tmp_path_factory.mktemp("peers")
    port = free_port()
    toml = node_toml(work / "var", port)
    for title, host in PEERS:
        toml += f'[[peers]]\nae_title = "{title}"\nhost = "{host}"\n'
    (work / "node.toml").write_text(toml)
    process = NodeProcess(work / "node.toml", port, work / "node.log").start("--workers", "0")
    try:
        yield process
    finally:
        process.terminate()


def audit(node: NodeProcess) -> list[dict]:
    path = node.config_path.parent / "var" / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def associate(node: NodeProcess, calling: str, source: str) -> tuple[bool, tuple[int, int, int] | None]:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE", bind_address=(source, 0))
    if assoc.is_established:
        ok = assoc.send_c_echo().Status == 0
        assoc.release()
        return ok, None
    rj = assoc.acceptor.primitive
    return False, (rj.result, rj.result_source, rj.diagnostic) if assoc.is_rejected else None


@pytest.mark.parametrize(
    ("calling", "source", "allowed"),
    [
        ("MODALITY", "127.0.0.1", True),
        ("MODALITY", "127.0.0.2", False),  # the same title from another host
        ("LOCALSCU", "127.0.0.1", True),  # a host name: localhost resolves to 127.0.0.1
        ("LOCALSCU", "127.0.0.2", False),
        ("RANGE", "127.0.0.2", True),  # a CIDR range
        ("STRANGER", "127.0.0.1", False),  # not a peer at all
    ],
)
def test_ae_title_is_bound_to_its_host(node: NodeProcess, calling: str, source: str, allowed: bool) -> None:
    ok, rejection = associate(node, calling, source)
    assert ok is allowed
    if not allowed:
        assert rejection == (1, 1, 3)  # rejected-permanent, service-user, calling AE title not recognised
        records = wait_for(lambda: [r for r in audit(node) if r["event_outcome_indicator"] == 4
                                    and r["active_participants"][0]["user_id"] == calling
                                    and r["active_participants"][0]["network_access_point_id"] == source],
                           10, what="rejection audit record")
        assert f"{calling!r}" in records[0]["event_outcome_description"]
        line = next(x for x in node.log().splitlines() if "association.rejected" in x and calling in x)
        assert f"peer={source}:" in line and "reason=" in line


def test_dcmtk_echoscu_as_a_peer(node: NodeProcess) -> None:
    echoscu = which_or_fail("echoscu")
    ok = subprocess.run([echoscu, "-aet", "MODALITY", "-aec", "CXRNODE", "127.0.0.1", str(node.port)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([echoscu, "-aet", "ORTHANC", "-aec", "CXRNODE", "127.0.0.1", str(node.port)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr

