"""The job queue and the outbox on SQLite and PostgreSQL: study completeness, leases, bounded
retries, atomic completion, delivery backoff and resend; concurrent claiming on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from nodekit import PG_URL, REPO
from pydicom.uid import generate_uid

from node.repository import InstanceRecord, Repository, make_engine


def received(study: str, *, at: float, accession: str = "A1") -> InstanceRecord:
    uid = generate_uid()
    return InstanceRecord(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        study_instance_uid=study,
        series_instance_uid=generate_uid(),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"aa/{uid}.dcm",
        size_bytes=100,
        accession_number=accession,
        received_at=at,
    )


def result(study: str) -> InstanceRecord:
    uid = generate_uid()
    return InstanceRecord(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        study_instance_uid=study,
        series_instance_uid=generate_uid(),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"bb/{uid}.dcm",
        size_bytes=10,
    )


def test_study_becomes_a_job_after_the_quiet_period_and_late_instances_make_a_new_job(
    repo: Repository,
) -> None:
    now = time.time()
    study = generate_uid()
    repo.record_instances([received(study, at=now - 5), received(study, at=now - 1)])
    assert repo.schedule_stable_studies(now, stable_seconds=2) == []  # last instance 1 s ago: not quiet
    [job1] = repo.schedule_stable_studies(now + 1.5, stable_seconds=2)
    assert len(repo.job_instances(job1)) == 2
    assert repo.schedule_stable_studies(now + 10, stable_seconds=2) == []  # nothing new: no new job
    late = received(study, at=now + 11)
    repo.record_instances([late, late])  # a resend of the same instance is one row
    [job2] = repo.schedule_stable_studies(now + 20, stable_seconds=2)
    assert [i.sop_instance_uid for i in repo.job_instances(job2)] == [late.sop_instance_uid]
    assert repo.status()["instances"] == 3


def test_record_instances_reports_new_rows_and_a_failed_batch_leaves_nothing(repo: Repository) -> None:
    """The receive path's insert (a raw-driver fast path on SQLite): new UIDs only, all or nothing."""
    from node.errors import DatabaseError

    now = time.time()
    first, second = received("1.2.40", at=now), received("1.2.40", at=now)
    assert repo.record_instances([first]) == {first.sop_instance_uid}
    assert repo.record_instances([first, second]) == {second.sop_instance_uid}  # resend: not new
    bad = InstanceRecord(**{**received("1.2.40", at=now).__dict__, "sop_class_uid": None})  # NOT NULL
    third = received("1.2.40", at=now)
    with pytest.raises(DatabaseError):
        repo.record_instances([third, bad])
    assert repo.find_instance(third.sop_instance_uid) is None  # rolled back with the bad row
    assert repo.record_instances([third]) == {third.sop_instance_uid}  # the connection still works
    assert repo.status()["instances"] == 3


def test_claim_lease_expiry_retry_and_bounded_failure(repo: Repository) -> None:
    now = time.time()
    repo.record_instances([received("1.2.3", at=now - 100)])
    [job] = repo.schedule_stable_studies(now, 10)
    claim = repo.claim_job("w1", lease_seconds=30, max_attempts=2, now=now)
    assert claim is not None and claim.id == job and claim.attempts == 1
    assert repo.claim_job("w2", 30, 2, now=now + 1) is None  # leased
    # w1 "dies": after the lease expires w2 takes the job over
    takeover = repo.claim_job("w2", 30, 2, now=now + 31)
    assert takeover is not None and takeover.id == job and takeover.attempts == 2
    assert not repo.renew_lease(job, "w1", 30)  # w1's lease is gone
    assert not repo.finish_job(job, "w1", [result("1.2.3")], ["pacs"])  # and it cannot record results
    # an error on the last allowed attempt: failed with its message
    assert repo.fail_job(job, "w2", "RuntimeError: boom", max_attempts=2, retry_delay=0) == "failed"
    status = repo.status()
    assert status["jobs"]["failed"] == 1 and status["results"] == 0
    assert status["errors"]["jobs"][0]["error"] == "RuntimeError: boom"


def test_error_is_retried_after_a_delay_then_done(repo: Repository) -> None:
    now = time.time()
    repo.record_instances([received("1.2.4", at=now - 100)])
    [job] = repo.schedule_stable_studies(now, 10)
    claim = repo.claim_job("w1", 30, 3)
    assert claim is not None
    assert repo.fail_job(job, "w1", "OSError: transient", max_attempts=3, retry_delay=60) == "queued"
    assert repo.claim_job("w1", 30, 3) is None  # not before the retry delay
    claim = repo.claim_job("w1", 30, 3, now=time.time() + 61)
    assert claim is not None and claim.attempts == 2
    results = [result("1.2.4"), result("1.2.4")]
    assert repo.finish_job(job, "w1", results, ["pacs", "archive"])
    status = repo.status()
    assert status["jobs"]["done"] == 1 and status["results"] == 2
    assert status["deliveries"] == {"pending": 4, "sent": 0, "failed": 0}
    assert status["studies"][0]["state"] == "delivering"


def test_a_job_that_keeps_killing_its_worker_ends_failed(repo: Repository) -> None:
    now = time.time()
    repo.record_instances([received("1.2.5", at=now - 100)])
    repo.schedule_stable_studies(now, 10)
    assert repo.claim_job("w1", 10, 2, now=now) is not None
    assert repo.claim_job("w2", 10, 2, now=now + 11) is not None  # attempt 2
    assert repo.claim_job("w3", 10, 2, now=now + 22) is None  # lease lost twice: failed, not claimed
    assert repo.status()["jobs"]["failed"] == 1


def test_release_on_shutdown_does_not_count_an_attempt(repo: Repository) -> None:
    now = time.time()
    repo.record_instances([received("1.2.6", at=now - 100)])
    [job] = repo.schedule_stable_studies(now, 10)
    assert repo.claim_job("w1", 30, 3) is not None
    assert repo.release_job(job, "w1")
    claim = repo.claim_job("w2", 30, 3)
    assert claim is not None and claim.attempts == 1


def test_delivery_backoff_failure_and_resend(repo: Repository) -> None:
    now = time.time()
    repo.record_instances([received("1.2.7", at=now - 100)])
    [job] = repo.schedule_stable_studies(now, 10)
    repo.claim_job("w1", 30, 3)
    assert repo.finish_job(job, "w1", [result("1.2.7")], ["pacs"])
    [due] = repo.due_deliveries(10)
    assert due.destination == "pacs" and due.instance.derived
    assert (
        repo.mark_attempt_failed(due.id, "refused", max_attempts=2, next_attempt_at=time.time() + 60)
        == "pending"
    )
    assert repo.due_deliveries(10) == []  # backing off
    [due] = repo.due_deliveries(10, now=time.time() + 61)
    assert repo.mark_attempt_failed(due.id, "refused again", max_attempts=2, next_attempt_at=0) == "failed"
    assert repo.status()["deliveries"]["failed"] == 1
    assert repo.resend_failed() == 1
    [due] = repo.due_deliveries(10)
    assert due.attempts == 0
    repo.mark_sent([due.id])
    status = repo.status()
    assert status["deliveries"] == {"pending": 0, "sent": 1, "failed": 0}
    assert status["studies"][0]["state"] == "done"


# -- PostgreSQL: several workers -------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_concurrent_claims_never_hand_a_job_twice(pg_schema: str) -> None:
    repos = [Repository(make_engine(PG_URL, schema=pg_schema)) for _ in range(4)]
    repos[0].create_schema()
    now = time.time()
    studies = [generate_uid() for _ in range(40)]
    repos[0].record_instances([received(s, at=now - 100) for s in studies])
    assert len(repos[0].schedule_stable_studies(now, 10)) == 40
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(len(repos))

    def work(repo: Repository, owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        barrier.wait(10)
        while (job := repo.claim_job(owner, 60, 3)) is not None:
            mine.append(job.id)
            assert repo.finish_job(job.id, owner, [], [])

    threads = [threading.Thread(target=work, args=(r, f"w{i}")) for i, r in enumerate(repos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [j for jobs in claimed.values() for j in jobs]
    assert len(every) == 40 and len(set(every)) == 40  # each job ran exactly once
    assert sum(1 for jobs in claimed.values() if jobs) >= 2  # and the work was shared
    assert repos[0].status()["jobs"]["done"] == 40
    for r in repos:
        r.engine.dispose()


CLAIM_AND_HANG = """
import sys, time
from node.repository import Repository, make_engine
repo = Repository(make_engine(sys.argv[1], schema=sys.argv[2]))
job = repo.claim_job("doomed-worker", lease_seconds=float(sys.argv[3]), max_attempts=3)
print(job.id, flush=True)
time.sleep(600)
"""


@pytest.mark.postgres
def test_postgres_killed_workers_job_is_taken_over(pg_schema: str) -> None:
    repo = Repository(make_engine(PG_URL, schema=pg_schema))
    repo.create_schema()
    repo.record_instances([received(generate_uid(), at=time.time() - 100)])
    [job] = repo.schedule_stable_studies(time.time(), 10)
    worker = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HANG, PG_URL, pg_schema, "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert int(worker.stdout.readline()) == job  # the other process holds the lease
        assert repo.claim_job("survivor", 60, 3) is None
        worker.kill()  # SIGKILL: no release, no cleanup
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    deadline = time.monotonic() + 10
    claim = None
    while claim is None and time.monotonic() < deadline:
        claim = repo.claim_job("survivor", 60, 3)
        time.sleep(0.2)
    assert claim is not None and claim.id == job and claim.attempts == 2
    assert repo.finish_job(job, "survivor", [], [])
    repo.engine.dispose()
