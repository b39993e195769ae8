"""node.audit: PS3.15 A.5 fields, JSON lines appended by several writers, syslog, no PHI."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from node import audit
from node.config import parse_config
from node.errors import ConfigError
from node.tls import TlsPeer

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_association_record_has_the_a5_fields(tmp_path: Path) -> None:
    trail = audit.AuditTrail("CXRNODE@host", tmp_path / "a" / "audit.jsonl")
    tls = TlsPeer("TLSv1.3", "TLS_AES_256_GCM_SHA384", "CN=orthanc")
    trail.record(audit.association(accepted=True, calling_aet="ORTHANC", host="10.1.2.3", node_aet="CXRNODE",
                                   node_host="10.1.2.1", over_tls=True, tls=tls))
    trail.record(audit.association(accepted=False, calling_aet="ORTHANC", host="10.6.6.6", node_aet="CXRNODE",
                                   node_host="10.1.2.1", over_tls=False, reason="not allowed from 10.6.6.6"))
    trail.close()
    ok, rejected = _lines(tmp_path / "a" / "audit.jsonl")
    assert ok["event_id"] == {"code": "110113", "scheme": "DCM", "meaning": "Security Alert"}
    assert ok["event_type_code"][0]["code"] == "110126"
    assert ok["event_outcome_indicator"] == 0 and ok["event_action_code"] == "E"
    assert ok["event_date_time"].endswith("Z")
    source, dest = ok["active_participants"]
    assert source == {
        "user_id": "ORTHANC", "alternative_user_id": "AETITLES=ORTHANC", "user_is_requestor": True,
        "network_access_point_id": "10.1.2.3", "network_access_point_type_code": "2",
        "role_id_code": {"code": "110153", "scheme": "DCM", "meaning": "Source Role ID"},
    }
    assert dest["user_id"] == "CXRNODE" and not dest["user_is_requestor"]
    assert ok["transport"] == "tls" and ok["tls"]["peer_certificate_subject"] == "CN=orthanc"
    assert ok["audit_source"]["audit_source_id"] == "CXRNODE@host"
    assert rejected["event_outcome_indicator"] == 4
    assert rejected["event_outcome_description"] == "not allowed from 10.6.6.6"
    assert rejected["transport"] == "tcp" and "tls" not in rejected


def test_instances_grouped_by_study_and_class(tmp_path: Path) -> None:
    refs = [audit.InstanceRef(STUDY, SOP_CLASS, f"{STUDY}.{i}") for i in range(3)]
    refs.append(audit.InstanceRef(STUDY, "1.2.840.10008.5.1.4.1.1.66.4", f"{STUDY}.9"))
    message = audit.instances_sent(node_aet="CXRNODE", node_host="h", destination="pacs",
                                   destination_aet="DEST", destination_host="127.0.0.1", instances=refs,
                                   error=None, over_tls=True)
    record = message.record("src")
    assert record["event_id"]["code"] == "110104" and record["event_action_code"] == "R"
    (study,) = record["participant_objects"]
    assert study["participant_object_id"] == STUDY
    assert study["participant_object_id_type_code"]["code"] == "110180"
    assert [(c["uid"], c["number_of_instances"]) for c in study["sop_classes"]] == [
        (SOP_CLASS, 3), ("1.2.840.10008.5.1.4.1.1.66.4", 1)]
    assert record["detail"] == {"destination": "pacs"}


def _received(status: int = 0, **kwargs: object) -> audit.AuditMessage:
    ref = audit.InstanceRef(STUDY, SOP_CLASS, f"{STUDY}.1")
    return audit.instances_received(calling_aet="M", host="127.0.0.1", node_aet="N", node_host="h",
                                    instances=[ref], status=status,
                                   **{"over_tls": False, **kwargs})  # type: ignore[arg-type]


def test_received_and_deleted_and_resend() -> None:
    new = _received().record("s")
    again = _received(duplicate=True).record("s")
    bad = _received(0xA900, over_tls=True, reason="no pixel data").record("s")
    assert (new["event_action_code"], again["event_action_code"]) == ("C", "U")
    assert bad["event_outcome_indicator"] == 4 and bad["detail"]["status"] == "0xA900"
    deleted = audit.study_deleted(node_aet="N", study_instance_uid=STUDY, instances=4, command="purge",
                                  by_operator=True).record("s")
    assert deleted["event_id"]["code"] == "110105" and deleted["event_action_code"] == "D"
    assert deleted["participant_objects"][0]["participant_object_id"] == STUDY
    launcher = deleted["active_participants"][0]
    assert launcher["user_is_requestor"] and launcher["role_id_code"]["code"] == "110151"
    assert launcher["alternative_user_id"] == ""
    resend = audit.resend_requested(node_aet="N", destination=None, count=3).record("s")
    assert resend["event_id"]["code"] == "110102" and resend["detail"]["deliveries"] == 3


def test_patient_fields_are_refused() -> None:
    message = audit.AuditMessage(audit.AuditEvent.SECURITY_ALERT, audit.Action.EXECUTE, audit.Outcome.SUCCESS,
                                 (), detail={"PatientName": "Doe^Jane"})
    with pytest.raises(ValueError, match="patient-identifying"):
        message.record("s")


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trails = [audit.AuditTrail("s", path) for _ in range(3)]  # like serve, a worker and a CLI command
    def write(trail: audit.AuditTrail) -> None:
        for _ in range(200):
            trail.record(_received())

    threads = [threading.Thread(target=write, args=(t,)) for t in trails for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(_lines(path)) == 1200


def test_syslog_receives_the_same_record(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        trail = audit.AuditTrail("s", tmp_path / "audit.jsonl", syslog_address=f"udp://127.0.0.1:{port}",
                                 syslog_facility="local4")
        trail.record(audit.resend_requested(node_aet="N", destination="pacs", count=1))
        data = server.recv(65536).decode()
        trail.close()
    # <PRI>: facility local4 (20) * 8 + severity info (6)
    assert data.startswith("<166>cxr-node-audit: {")
    sent = json.loads(data.split("cxr-node-audit: ", 1)[1].rstrip("\x00"))
    assert sent == _lines(tmp_path / "audit.jsonl")[0]


def test_audit_settings(tmp_path: Path) -> None:
    config = parse_config({"node": {"data_dir": "d"}}, base_dir=tmp_path)
    assert config.audit_path == tmp_path / "d" / "audit" / "audit.jsonl"
    config = parse_config({"audit": {"path": "logs/a.jsonl"}}, base_dir=tmp_path)
    trail = audit.open_audit_trail(config)
    assert trail.path == tmp_path / "logs" / "a.jsonl" and trail.path.exists()
    trail.close()
    assert isinstance(audit.open_audit_trail(parse_config({"audit": {"enabled": False}})), audit.NoAudit)
    with pytest.raises(ConfigError, match="syslog_address"):
        audit.parse_syslog_address("nowhere")
    tcp = audit.parse_syslog_address("tcp://logs.example:6514")
    assert tcp == (("logs.example", 6514), socket.SOCK_STREAM)
    assert audit.parse_syslog_address("/dev/log") == ("/dev/log", socket.SOCK_DGRAM)
    with pytest.raises(ConfigError, match="syslog_facility"):
        audit.AuditTrail("s", None, syslog_address="udp://127.0.0.1:514", syslog_facility="kern")


def test_received_instances_are_gathered_per_study(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "RECEIVED_PER_RECORD", 3)
    gathered = audit.ReceivedInstances()
    a1, a2, b1 = (audit.InstanceRef(study, SOP_CLASS, f"{study}.{i}")
                  for study, i in (("1.1", 1), ("1.1", 2), ("1.2", 1)))
    assert gathered.add(a1, duplicate=False) == []
    assert gathered.add(a2, duplicate=True) == []  # same study: a resent instance waits beside it
    assert gathered.add(b1, duplicate=False) == [(False, [a1]), (True, [a2])]  # another study
    refs = [audit.InstanceRef("1.2", SOP_CLASS, f"1.2.{i}") for i in (2, 3)]
    assert gathered.add(refs[0], duplicate=False) == []
    assert gathered.add(refs[1], duplicate=False) == [(False, [b1, *refs])]  # RECEIVED_PER_RECORD
    assert gathered.take() == []
