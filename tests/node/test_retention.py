"""Retention (node/retention.py) on SQLite and PostgreSQL: which studies go, what stays, files and rows
together; ``cxr-node purge``; the loop ``serve`` runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from node.cli.main import main
from node.repository import InstanceRecord, Repository, make_engine
from node.retention import DAY_SECONDS, RetentionLoop, purge
from node.store import InstanceStore


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances", fsync=False)


def _instance(store: InstanceStore, study: str, at: float, sop_class: str = "1.2.840.10008.5.1.4.1.1.1.1"
              ) -> InstanceRecord:
    uid = generate_uid()
    relpath, _ = store.write(uid, b"DICM" + b"\0" * 96)
    return InstanceRecord(sop_instance_uid=uid, sop_class_uid=sop_class, study_instance_uid=study,
                          series_instance_uid=generate_uid(), transfer_syntax_uid="1.2.840.10008.1.2.1",
                          path=relpath, size_bytes=100, received_at=at)


def _study(repo: Repository, store: InstanceStore, *, received_at: float, job: str = "done",
           delivery: str = "sent") -> tuple[str, list[str]]:
    """A study in a given state: its received instance, and (job done) one result delivered to one PACS."""
    study = generate_uid()
    source = _instance(store, study, received_at)
    repo.record_instances([source])
    paths = [source.path]
    if job == "none":  # received, not yet scheduled
        return study, paths
    [job_id] = repo.schedule_stable_studies(received_at + 100, 10)
    if job == "queued":
        return study, paths
    claim = repo.claim_job("w", 30, 1, now=received_at + 100)
    assert claim is not None and claim.id == job_id
    if job == "failed":
        assert repo.fail_job(job_id, "w", "boom", max_attempts=1, retry_delay=0) == "failed"
        return study, paths
    result = _instance(store, study, received_at, sop_class="1.2.840.10008.5.1.4.1.1.66.4")
    assert repo.finish_job(job_id, "w", [result], ["pacs"])
    paths.append(result.path)
    [due] = [d for d in repo.due_deliveries(1000, now=time.time() + 1)
             if d.instance.study_instance_uid == study]
    if delivery == "sent":
        repo.mark_sent([due.id])
    elif delivery == "failed":
        assert repo.mark_attempt_failed(due.id, "refused", max_attempts=1, next_attempt_at=0) == "failed"
    return study, paths


def test_only_finished_studies_older_than_the_period_go(repo: Repository, store: InstanceStore) -> None:
    now = time.time()
    old = now - 40 * DAY_SECONDS
    delivered, delivered_files = _study(repo, store, received_at=old)
    failed_job, failed_job_files = _study(repo, store, received_at=old, job="failed")
    failed_delivery, _ = _study(repo, store, received_at=old, delivery="failed")
    waiting, waiting_files = _study(repo, store, received_at=old, delivery="pending")  # PACS down
    # Result objects are stamped with the time their job finished (now), and the age that counts is
    # the study's NEWEST object's: the purge runs "31 days from now", so that they are old too.
    later = now + 31 * DAY_SECONDS
    recent, recent_files = _study(repo, store, received_at=later - 2 * DAY_SECONDS)
    queued, _ = _study(repo, store, received_at=old, job="queued")  # late: a claim would take it
    unscheduled, _ = _study(repo, store, received_at=old, job="none")  # last: any scheduling would take it

    dry = purge(repo, store, 30, now=later, dry_run=True)
    assert sorted(dry.studies) == sorted([delivered, failed_job, failed_delivery])
    assert dry.instances == 5 and dry.bytes == 500 and repo.instance_count() == 11
    assert all(store.path(p).is_file() for p in delivered_files + failed_job_files)

    report = purge(repo, store, 30, now=later)
    assert sorted(report.studies) == sorted(dry.studies) and report.instances == 5
    assert report.files_missing == 0 and "3 studies removed (5 instances" in report.summary()
    assert not any(store.path(p).exists() for p in delivered_files + failed_job_files)
    assert all(store.path(p).is_file() for p in waiting_files + recent_files)
    status = repo.status()
    assert status["instances"] == 4 and status["results"] == 2  # waiting + recent keep their results
    assert status["jobs"] == {"queued": 1, "running": 0, "done": 2, "failed": 0}
    assert status["deliveries"] == {"pending": 1, "sent": 1, "failed": 0}
    assert {s["study_instance_uid"] for s in status["studies"]} == {waiting, unscheduled, queued, recent}
    assert purge(repo, store, 30, now=later).studies == []  # nothing left to do


def test_a_study_that_waits_does_not_hide_the_ones_after_it(repo: Repository, store: InstanceStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import node.retention

    monkeypatch.setattr(node.retention, "STUDIES_PER_ROUND", 2)
    now = time.time()
    waiting = [_study(repo, store, received_at=now - (50 - k) * DAY_SECONDS, delivery="pending")[0]
               for k in range(3)]
    done = [_study(repo, store, received_at=now - (40 - k) * DAY_SECONDS)[0] for k in range(5)]
    first = purge(repo, store, 30, now=now + 31 * DAY_SECONDS, max_studies=2)
    assert first.studies == done[:2]  # oldest first
    report = purge(repo, store, 30, now=now + 31 * DAY_SECONDS)
    assert report.studies == done[2:]
    assert purge(repo, store, 30, now=now + 31 * DAY_SECONDS, dry_run=True).studies == []
    assert repo.instance_count() == 2 * len(waiting)  # each: its image and its undelivered result


def test_a_new_instance_keeps_its_study_and_a_missing_file_is_counted(repo: Repository,
                                                                      store: InstanceStore) -> None:
    now = time.time()
    study, files = _study(repo, store, received_at=now - 40 * DAY_SECONDS)
    assert repo.purge_study(study, now + 31 * DAY_SECONDS, dry_run=True) is not None
    repo.record_instances([_instance(store, study, now)])  # the PACS sends one more image of it
    assert repo.purge_study(study, now + 31 * DAY_SECONDS) is None  # open again: not complete
    assert purge(repo, store, 30, now=now + 31 * DAY_SECONDS).studies == []
    repo.schedule_stable_studies(now + 100, 10)
    claim = repo.claim_job("w", 30, 1, now=now + 100)
    assert claim is not None and repo.finish_job(claim.id, "w", [], [])
    store.remove(files[0])  # gone by hand already
    report = purge(repo, store, 30, now=now + 31 * DAY_SECONDS)
    assert report.studies == [study] and report.instances == 3 and report.files_missing == 1
    assert repo.instance_count() == 0
    with pytest.raises(ValueError, match="older_than_days must be > 0"):
        purge(repo, store, 0)


def test_the_serve_loop_purges_until_stopped(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'loop.sqlite3'}")
    repo = Repository(engine)
    repo.create_schema()
    store = InstanceStore(tmp_path / "instances", fsync=False)
    study, files = _study(repo, store, received_at=time.time() - 3 * DAY_SECONDS)
    stop = threading.Event()
    loop = RetentionLoop(repo, store, retention_days=1.0, interval=0.05, stop=stop)
    thread = threading.Thread(target=loop.run)
    thread.start()
    deadline = time.monotonic() + 10
    while repo.instance_count() and time.monotonic() < deadline:
        # the result object is stamped "now": back-date it so that the whole study is old
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE instances SET received_at = received_at - 2 * 86400 "
                                 "WHERE received_at > ?", (time.time() - DAY_SECONDS,))
        time.sleep(0.1)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and repo.instance_count() == 0
    assert not any(store.path(p).exists() for p in files)
    engine.dispose()


def test_purge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    from node.config import load_config
    from node.service import open_repository, open_store

    loaded = load_config(config)
    repo, store = open_repository(loaded), open_store(loaded)
    study, files = _study(repo, store, received_at=time.time() - 40 * DAY_SECONDS)
    with repo.engine.begin() as conn:  # the whole study 40 days old, its result too
        conn.exec_driver_sql("UPDATE instances SET received_at = ?", (time.time() - 40 * DAY_SECONDS,))
    repo.engine.dispose()

    assert main(["purge", "--config", str(config)]) == 2
    assert "pass --older-than-days DAYS (> 0) or set [node] retention_days" in capsys.readouterr().err
    assert main(["purge", "--config", str(config), "--older-than-days", "30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 studies would be removed (2 instances") and study in out
    assert all(store.path(p).is_file() for p in files)
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\nretention_days = 30\n')
    assert main(["purge", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["studies"] == [study] and report["instances"] == 2 and not report["dry_run"]
    assert not any(store.path(p).exists() for p in files)
    config.write_text('[node]\nretention_days = -1\n')
    assert main(["purge", "--config", str(config)]) == 1
    assert "retention_days must be >= 0" in capsys.readouterr().err


def test_serve_runs_retention_when_configured(tmp_path: Path) -> None:
    from node.config import parse_config
    from node.service import NodeService

    data = {"node": {"data_dir": str(tmp_path / "var"), "retention_days": 1.0,
                     "retention_check_seconds": 0.05}}
    service = NodeService(parse_config(data), analyzer_factory=lambda: None,  # type: ignore[arg-type,return-value]
                          workers=0, listen=False, deliver=False)
    _, files = _study(service.repo, service.store, received_at=time.time() - 3 * DAY_SECONDS, job="failed")
    service.start()
    try:
        deadline = time.monotonic() + 10
        while service.repo.instance_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.repo.instance_count() == 0 and not service.store.path(files[0]).exists()
    finally:
        service.stop(timeout=5)
    audit_log = tmp_path / "var" / "audit" / "audit.jsonl"  # [audit] defaults: on, under data_dir
    deleted = [json.loads(line) for line in audit_log.read_text().splitlines()
               if '"110105"' in line]  # DICOM Study Deleted
    assert len(deleted) == 1, audit_log.read_text()[-2000:]
    assert service.retention_thread is not None and not service.retention_thread.is_alive()
    plain = NodeService(parse_config({"node": {"data_dir": str(tmp_path / "var2")}}), workers=0, listen=False,
                        deliver=False, analyzer_factory=lambda: None)  # type: ignore[arg-type,return-value]
    plain.start()
    plain.stop(timeout=5)
    assert plain.retention_thread is None  # retention_days = 0: keep everything


def test_the_loop_audits_each_study_it_removes(tmp_path: Path) -> None:
    """Retention removes studies nobody asked to remove at that moment: each one leaves a PS3.15 A.5.3.5
    "DICOM Study Deleted" record (action D, the node as requestor, command "retention", no operator)."""
    from node.audit import AuditTrail

    engine = make_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    repo = Repository(engine)
    repo.create_schema()
    store = InstanceStore(tmp_path / "instances", fsync=False)
    old = time.time() - 3 * DAY_SECONDS
    studies = [_study(repo, store, received_at=old)[0] for _ in range(2)]
    kept, _ = _study(repo, store, received_at=old, delivery="pending")  # unfinished: stays, not audited
    with engine.begin() as conn:  # the results too are old
        conn.exec_driver_sql("UPDATE instances SET received_at = ?", (old,))
    trail = AuditTrail("CXRNODE@test", tmp_path / "audit" / "audit.jsonl")
    loop = RetentionLoop(repo, store, retention_days=1.0, interval=60, stop=threading.Event(),
                         audit_trail=trail, node_aet="CXRNODE")
    report = loop.run_once()
    trail.close()
    assert report is not None and sorted(report.studies) == sorted(studies)
    records = [json.loads(line) for line in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    assert sorted(r["participant_objects"][0]["participant_object_id"] for r in records) == sorted(studies)
    for record in records:
        assert record["event"] == "study-deleted" and record["event_id"]["code"] == "110105"
        assert record["event_action_code"] == "D" and record["event_outcome_indicator"] == 0
        assert record["detail"] == {"command": "retention", "instances": 2}
        [node] = record["active_participants"]  # the node alone: no operator launched it
        assert node["user_id"] == "CXRNODE" and node["user_is_requestor"] is True
    assert repo.instance_count() == 2 and kept not in report.studies
    assert RetentionLoop(repo, store, 1.0, 60, threading.Event()).run_once() is not None  # no trail: no audit
    engine.dispose()
