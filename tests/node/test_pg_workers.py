"""Scale-out on PostgreSQL with real ``cxr-node worker`` processes: no job runs twice, and the
job of a worker killed with SIGKILL is taken over once its lease expires."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from nodekit import PG_URL, WorkerProcess, make_dx, node_toml, wait_for
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.config import load_config
from node.db import Instance, Job
from node.ingest import file_meta_bytes
from node.repository import InstanceRecord
from node.service import open_repository, open_store


def _store_study(repo, store, n_images: int, seed: int) -> str:  # noqa: ANN001
    """Put a study into the shared store and database, as the receive path would."""
    study, series = generate_uid(), generate_uid()
    records = []
    for i in range(n_images):
        ds = make_dx(study, series, rows=192, cols=160, seed=seed * 100 + i)
        ds.InstanceNumber = i + 1
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, False
        write_dataset(body, ds)  # the data set as a peer sends it, after the file meta
        ts = str(ds.file_meta.TransferSyntaxUID)
        meta = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ts, "TESTSCU")
        relpath, _ = store.write(ds.SOPInstanceUID, meta, body.getvalue())
        records.append(
            InstanceRecord(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                study_instance_uid=study,
                series_instance_uid=series,
                transfer_syntax_uid=ts,
                path=relpath,
                size_bytes=len(meta) + len(body.getvalue()),
                received_at=time.time() - 3600,
            )
        )
    repo.record_instances(records)
    return study


def _jobs(repo) -> dict[str, Job]:  # noqa: ANN001
    with repo.engine.connect() as conn:
        return {row.study_instance_uid: row for row in conn.execute(select(Job.__table__))}


def _results_per_study(repo) -> dict[str, int]:  # noqa: ANN001
    i = Instance.__table__.c
    with repo.engine.connect() as conn:
        rows = conn.execute(select(i.study_instance_uid, i.sop_class_uid).where(i.derived.is_(True))).all()
    counts: dict[str, int] = {}
    for study, sop_class in rows:
        if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88."):  # Structured Report
            counts[study] = counts.get(study, 0) + 1
    return counts


def _job_done_lines(*logs: Path) -> list[dict]:
    lines = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"job.done"' in line:
                lines.append(json.loads(line)["msg"])
    return lines


@pytest.mark.postgres
@pytest.mark.slow  # two worker processes loading models, a lease to expire: ~70 s
def test_two_worker_processes_on_postgresql_share_jobs_and_take_over_a_killed_workers_job(
    tmp_path: Path, models_dir: Path, pg_schema: str
) -> None:
    toml = node_toml(
        tmp_path / "var",
        0,
        models_dir=models_dir,
        node={"database_url": PG_URL, "database_schema": pg_schema, "log_format": "json"},
        worker={"lease_seconds": 3.0, "poll_seconds": 0.2, "load_retry_seconds": 1.0},
    )
    config_path = tmp_path / "node.toml"
    config_path.write_text(toml)
    config = load_config(config_path)
    repo, store = open_repository(config), open_store(config)
    try:
        # Job 1 is long (8 images) so that the first worker is surely inside it when killed.
        long_study = _store_study(repo, store, 8, seed=0)
        [long_job] = repo.schedule_stable_studies(time.time(), stable_seconds=1)
        short_studies = [_store_study(repo, store, 1, seed=s) for s in range(1, 5)]
        assert len(repo.schedule_stable_studies(time.time(), stable_seconds=1)) == 4

        doomed = WorkerProcess(config_path, tmp_path / "doomed.log").start()
        assert doomed.proc is not None

        def doomed_holds_long_job() -> bool:
            job = _jobs(repo)[long_study]
            return job.state == "running" and f":{doomed.proc.pid}:" in (job.lease_owner or "")

        wait_for(doomed_holds_long_job, timeout=180, interval=0.1, what="first worker running the long job")
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(30)
        job = _jobs(repo)[long_study]
        assert job.state == "running", "the killed worker must have died inside its job"
        assert job.attempts == 1

        workers = [WorkerProcess(config_path, tmp_path / f"w{k}.log").start() for k in (1, 2)]
        try:
            wait_for(
                lambda: all(j.state == "done" for j in _jobs(repo).values()),
                timeout=300,
                interval=0.5,
                what="every job done",
            )
        finally:
            for w in workers:
                assert w.terminate(60) == 0  # SIGTERM: a clean stop

        jobs = _jobs(repo)
        taken_over = jobs[long_study]
        assert taken_over.id == long_job
        assert taken_over.attempts == 2, "the killed worker's job is claimed again after its lease"
        assert f":{doomed.proc.pid}:" not in (taken_over.lease_owner or "")
        for study in short_studies:
            assert jobs[study].attempts == 1, "no job runs twice"
        # One result set per study (an SR per image): the killed attempt left nothing recorded.
        assert _results_per_study(repo) == {long_study: 8, **{s: 1 for s in short_studies}}
        done = _job_done_lines(tmp_path / "w1.log", tmp_path / "w2.log")
        assert sorted(line["job_id"] for line in done) == sorted(j.id for j in jobs.values())
        assert not _job_done_lines(tmp_path / "doomed.log")
    finally:
        repo.engine.dispose()
