"""Audit records of the operator commands: ``cxr-node resend`` and ``cxr-node purge`` (real CLI runs)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from nodekit import REPO, free_port
from outboxkit import audit_records, outbox_with_results


def cli(config: Path, *args: str) -> str:
    command = [sys.executable, "-m", "node.cli.main", *args, "--config", str(config)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@pytest.mark.slow  # three CLI processes (each imports the node: ~6 s of CPU)
def test_resend_and_purge_are_audited(tmp_path: Path) -> None:
    closed = {"name": "down", "ae_title": "DEST", "host": "127.0.0.1", "port": free_port()}
    loop, objects, audit_path = outbox_with_results(tmp_path, closed, {"max_attempts": 1})
    loop.run_once()  # nobody listens: the three deliveries fail for good
    assert loop.repo.status()["deliveries"]["failed"] == 3
    failed = [r for r in audit_records(audit_path) if r["event_action_code"] == "R"]
    assert failed and failed[0]["event_outcome_indicator"] == 4
    assert failed[0]["detail"] == {"destination": "down"}

    assert "3 failed deliveries re-queued" in cli(tmp_path / "node.toml", "resend", "--destination", "down")
    (resend,) = [r for r in audit_records(audit_path) if r["event"] == "begin-transferring"]
    assert resend["detail"] == {"command": "resend", "destination": "down", "deliveries": 3}
    operator, application = resend["active_participants"]
    assert operator["user_is_requestor"] and operator["role_id_code"]["meaning"] == "Application Launcher"
    assert application["user_id"] == "CXRNODE"

    loop.run_once()  # fails again: the study is finished (no pending delivery)
    time.sleep(1.0)
    study = str(objects[0].StudyInstanceUID)
    assert study in cli(tmp_path / "node.toml", "purge", "--older-than-days", "0.00001")
    (deleted,) = [r for r in audit_records(audit_path) if r["event"] == "study-deleted"]
    assert deleted["event_id"]["code"] == "110105" and deleted["event_action_code"] == "D"
    assert deleted["participant_objects"][0]["participant_object_id"] == study
    assert deleted["detail"] == {"command": "purge", "instances": 4}  # the study's image and its 3 results
    # a dry run removes nothing and audits nothing
    cli(tmp_path / "node.toml", "purge", "--older-than-days", "0.00001", "--dry-run")
    assert len([r for r in audit_records(audit_path) if r["event"] == "study-deleted"]) == 1
