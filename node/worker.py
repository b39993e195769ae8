"""The analysis worker: claims a job, runs the chest pipeline on each image, stores the results.

The pipeline (``pipelines.chest.ChestPipeline``) is loaded ONCE per worker process, lazily, in
the worker's own thread: the DICOM listener is up before torch is even imported, and inference
never runs on an association thread. The result objects come from the result writers
(``node.results.build_result_objects``) and are stored exactly like received instances (same
store, same table, ``derived = True``); their outbox rows are written in the same transaction
that marks the job done, so a crash either loses the whole attempt (the job is claimed again
when its lease expires) or keeps all of it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pydicom

from node.config import NodeConfig
from node.errors import DatabaseError, StoreError
from node.logs import log_event
from node.repository import ClaimedJob, InstanceRecord, Repository
from node.store import InstanceStore, encode_part10

if TYPE_CHECKING:  # node.results imports highdicom: loaded when the first job runs
    from node.results import ResultSeries

log = logging.getLogger("node.worker")


class Analyzer(Protocol):
    """Turns one stored source image into result objects (SEG, SR, secondary capture)."""

    def analyze(
        self, source: pydicom.Dataset, *, series: ResultSeries | None = None, instance_number: int = 1
    ) -> list[pydicom.Dataset]: ...


class ChestAnalyzer:
    """The real chain: ``load_dicom`` -> ``ChestPipeline.analyze`` -> ``build_result_objects``."""

    def __init__(self, models_dir: Path, device: str = "auto", institution_name: str = "",
                 use_view_position: bool = True, use_body_part: bool = True,
                 use_lung_field: bool = True) -> None:
        from pipelines.chest import ChestPipeline  # torch/MONAI: imported here, not at module load

        self._pipeline = ChestPipeline.from_models_dir(
            models_dir, device=None if device == "auto" else device, use_view_position=use_view_position,
            use_body_part=use_body_part, use_lung_field=use_lung_field,
        )
        self._institution_name = institution_name

    def analyze(
        self, source: pydicom.Dataset, *, series: ResultSeries | None = None, instance_number: int = 1
    ) -> list[pydicom.Dataset]:
        from node.results import ResultSettings, build_result_objects
        from pipelines.image import load_dicom

        image = load_dicom(source)
        result = self._pipeline.analyze(image)
        settings = ResultSettings(institution_name=self._institution_name or None)
        return list(build_result_objects(source, result, settings=settings, image=image,
                                         series=series, instance_number=instance_number))


def chest_analyzer_factory(config: NodeConfig) -> Callable[[], Analyzer]:
    def factory() -> Analyzer:
        return ChestAnalyzer(config.models_dir, config.pipeline.device, config.pipeline.institution_name,
                             config.pipeline.use_view_position, config.pipeline.use_body_part,
                             config.pipeline.use_lung_field)

    return factory


class LeaseKeeper:
    """Renews a claimed job's lease from its own thread for as long as the job runs.

    Renewing only between images let a single slow image (a loaded CPU, a first inference)
    outlast the lease, so another worker claimed a job that was still being analysed. The
    heartbeat renews every third of the lease, so only a worker that is truly gone (killed,
    hung outside Python) loses its job. ``lost`` is set when the database says the job is no
    longer ours; the analysis checks it between images.
    """

    def __init__(self, repo: Repository, job_id: int, owner: str, lease_seconds: float) -> None:
        self._repo, self._job_id, self._owner, self._lease = repo, job_id, owner, lease_seconds
        self._done = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._lease / 3):
            try:
                if not self._repo.renew_lease(self._job_id, self._owner, self._lease):
                    self.lost.set()
                    return
            except DatabaseError as exc:  # transient: the next beat tries again before expiry
                log_event(log, "job.lease_renew_failed", logging.WARNING, job_id=self._job_id, error=str(exc))


class JobFailed(Exception):
    """No image of the job could be analysed (the message lists why)."""


def worker_owner(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{index}"


def retry_delay(attempts: int) -> float:
    """Backoff before a failed job is tried again: 5 s, 10 s, 20 s ... capped at 5 min."""
    return float(min(300, 5 * 2 ** max(0, attempts - 1)))


class Worker:
    """One analysis loop (a thread of ``serve`` or of ``cxr-node worker``)."""

    def __init__(
        self,
        config: NodeConfig,
        repo: Repository,
        store: InstanceStore,
        analyzer_factory: Callable[[], Analyzer],
        *,
        owner: str,
        stop: threading.Event,
        wake: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.repo = repo
        self.store = store
        self.analyzer_factory = analyzer_factory
        self.owner = owner
        self.stop_event = stop
        self.wake = wake or threading.Event()
        self.analyzer: Analyzer | None = None
        self.load_error: str | None = None
        self.jobs_done = 0

    # -- lifecycle --------------------------------------------------------------------------
    def load(self) -> bool:
        """Load the pipeline once; on failure log it (jobs stay queued, nothing is lost)."""
        started = time.monotonic()
        try:
            self.analyzer = self.analyzer_factory()
        except Exception as exc:  # a missing/broken bundle must not crash the node
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            log_event(
                log,
                "worker.load_failed",
                logging.ERROR,
                owner=self.owner,
                models_dir=str(self.config.models_dir),
                error=self.load_error,
            )
            return False
        log_event(log, "worker.ready", owner=self.owner, seconds=time.monotonic() - started)
        return True

    def run(self) -> None:
        # A node may start before its models are in place (or with a broken bundle): it keeps
        # receiving, jobs stay queued, and the worker tries to load again every few seconds.
        while self.analyzer is None:
            if self.load():
                break
            if self.stop_event.wait(self.config.worker.load_retry_seconds):
                return
        poll = self.config.worker.poll_seconds
        while not self.stop_event.is_set():
            try:
                job = self.repo.claim_job(
                    self.owner, self.config.worker.lease_seconds, self.config.worker.max_attempts
                )
            except DatabaseError as exc:
                log_event(log, "worker.db_error", logging.ERROR, owner=self.owner, error=str(exc))
                self.stop_event.wait(poll)
                continue
            if job is None:
                self.wake.wait(poll)
                self.wake.clear()
                continue
            self.process(job)

    # -- one job ----------------------------------------------------------------------------
    def process(self, job: ClaimedJob) -> str:
        """Run one claimed job to done / queued-for-retry / failed / released; returns the state."""
        started = time.monotonic()
        log_event(
            log,
            "job.started",
            job_id=job.id,
            study=job.study_instance_uid,
            accession=job.accession_number,
            attempt=job.attempts,
            owner=self.owner,
        )
        try:
            with LeaseKeeper(self.repo, job.id, self.owner, self.config.worker.lease_seconds) as lease:
                outcome = self._analyse_job(job, lease)
        except Exception as exc:
            message = f"{exc.__class__.__name__}: {exc}"
            try:
                state = self.repo.fail_job(
                    job.id, self.owner, message, self.config.worker.max_attempts, retry_delay(job.attempts)
                )
            except DatabaseError as db_exc:
                state = f"unrecorded ({db_exc})"  # the lease will expire and the job be retried
            log_event(
                log,
                "job.failed" if state == "failed" else "job.retry",
                logging.WARNING,
                job_id=job.id,
                study=job.study_instance_uid,
                attempt=job.attempts,
                state=state,
                error=message,
                seconds=time.monotonic() - started,
            )
            return state
        if outcome is None:
            self.repo.release_job(job.id, self.owner)
            log_event(log, "job.released", job_id=job.id, study=job.study_instance_uid, owner=self.owner)
            return "queued"
        results, skipped = outcome
        names = [d.name for d in self.config.destinations]
        if not self.repo.finish_job(job.id, self.owner, results, names, note=skipped):
            log_event(log, "job.lease_lost", logging.WARNING, job_id=job.id, study=job.study_instance_uid)
            return "lost"
        self.jobs_done += 1
        log_event(
            log,
            "job.done",
            job_id=job.id,
            study=job.study_instance_uid,
            accession=job.accession_number,
            results=len(results),
            deliveries=len(results) * len(names),
            skipped=skipped or "",
            seconds=time.monotonic() - started,
        )
        return "done"

    def _analyse_job(self, job: ClaimedJob, lease: LeaseKeeper) -> tuple[list[InstanceRecord], str] | None:
        """Analyse every image; None when stopping (the job is released, not failed)."""
        assert self.analyzer is not None
        instances = self.repo.job_instances(job.id)
        results: list[InstanceRecord] = []
        errors: list[str] = []
        from node.results import ResultSeries

        series = ResultSeries()  # one SEG/SR/SC series for the whole study's results
        for number, inst in enumerate(instances, start=1):
            if self.stop_event.is_set():
                return None
            try:
                source = self.store.read(inst.path)
                outputs = self.analyzer.analyze(source, series=series, instance_number=number)
            except (ValueError, StoreError) as exc:  # ImageDecodeError is a ValueError: a bad image
                errors.append(f"{inst.sop_instance_uid}: {exc.__class__.__name__}: {exc}")
                log_event(
                    log,
                    "image.not_analysed",
                    logging.WARNING,
                    job_id=job.id,
                    sop_instance_uid=inst.sop_instance_uid,
                    error=str(exc),
                )
                continue
            results.extend(self._store_results(outputs, inst))
            if lease.lost.is_set():
                raise DatabaseError(f"lease on job {job.id} lost while analysing")
        if errors and len(errors) == len(instances):
            raise JobFailed(f"no image analysed: {'; '.join(errors)}")
        return results, "; ".join(errors)

    def _store_results(self, outputs: list[pydicom.Dataset], source: InstanceRecord) -> list[InstanceRecord]:
        records = []
        directories = set()
        for ds in outputs:
            data = encode_part10(ds)
            relpath, directory = self.store.write(str(ds.SOPInstanceUID), data)
            directories.add(directory)
            records.append(
                InstanceRecord(
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=relpath,
                    size_bytes=len(data),
                    accession_number=source.accession_number,
                    derived=True,
                )
            )
        self.store.sync_dirs(directories)
        return records


def start_worker_threads(
    config: NodeConfig,
    repo: Repository,
    store: InstanceStore,
    analyzer_factory: Callable[[], Analyzer],
    count: int,
    stop: threading.Event,
    wake: threading.Event,
) -> list[tuple[Worker, threading.Thread]]:
    """Start ``count`` worker threads sharing ONE analyzer, loaded by the first thread that needs it."""
    lock = threading.Lock()
    loaded: list[Analyzer] = []

    def shared_factory() -> Analyzer:
        with lock:
            if not loaded:
                loaded.append(analyzer_factory())
            return loaded[0]

    started: list[tuple[Worker, threading.Thread]] = []
    for index in range(count):
        worker = Worker(config, repo, store, shared_factory, owner=worker_owner(index), stop=stop, wake=wake)
        thread = threading.Thread(target=worker.run, name=f"worker-{index}", daemon=True)
        thread.start()
        started.append((worker, thread))
    return started
