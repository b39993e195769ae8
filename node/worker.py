"""The analysis worker: claims a job, runs the chest pipeline on each image, stores the results.

The pipeline (``pipelines.chest.ChestPipeline``) is loaded ONCE per process, at start-up and
before the DICOM listener opens (:func:`load_models`): a node whose models cannot be loaded exits
with an error naming the folder instead of accepting studies it will never analyse. Inference
never runs on an association thread.

Each image is isolated: any exception for one image (an undecodable pixel stream, a data set
nested too deeply, a writer refusing a value, a MemoryError from a bomb) fails that image only
(:class:`node.errors.ImageFailure`), its reason goes into the job's note, and the study's other
images are analysed. Such failures are deterministic and never retried; only faults outside the
image (database, store I/O, a lost lease: :class:`node.errors.TransientJobError`) queue the job
again with a backoff. Reasons are made safe first (node.phi): no patient name, ID or birth date.

The result objects come from the result writers
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
from typing import TYPE_CHECKING, Any, Protocol

import pydicom
import pydicom.filereader
from pydicom.errors import InvalidDicomError

from node.config import NodeConfig
from node.errors import (
    DatabaseError,
    ImageFailure,
    ModelsUnavailableError,
    StoreError,
    TransientJobError,
)
from node.ingest.commit import store_result
from node.logs import escape_control, log_event, redact, redacting
from node.phi import identity_values, identity_values_from_file, safe_message
from node.repository import ClaimedJob, InstanceRecord, Repository
from node.sop_classes import is_analysed
from node.store import InstanceStore
from pipelines.image import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # node.results imports highdicom: loaded when the first job runs
    from node.results import ResultSeries

log = logging.getLogger("node.worker")


class Analyzer(Protocol):
    """Turns one stored source image into result objects (SEG, SR, secondary capture)."""

    def analyze(
        self, source: pydicom.Dataset, *, series: ResultSeries | None = None, instance_number: int = 1
    ) -> list[pydicom.Dataset]: ...


class AnalysisStageError(Exception):
    """An exception of one stage of :meth:`ChestAnalyzer.analyze` (``decode``, ``analyse``, ``write``)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {cause.__class__.__name__}")
        self.stage, self.cause = stage, cause


class ChestAnalyzer:
    """The real chain: ``load_dicom`` -> ``ChestPipeline.analyze`` -> ``build_result_objects``."""

    def __init__(self, models_dir: Path, device: str = "auto", institution_name: str = "",
                 use_view_position: bool = True, use_body_part: bool = True,
                 use_lung_field: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if not Path(models_dir).is_dir():  # said at once, before seconds of importing torch
            raise ModelsUnavailableError(f"models folder not found: {Path(models_dir).resolve()}")
        from pipelines.chest import ChestPipeline  # torch/MONAI: imported here, not at module load
        from pipelines.runtime import freeze_loaded_heap

        self._pipeline = ChestPipeline.from_models_dir(
            models_dir, device=None if device == "auto" else device, use_view_position=use_view_position,
            use_body_part=use_body_part, use_lung_field=use_lung_field,
        )
        freeze_loaded_heap()  # the models live as long as the process: full collections skip them
        self._institution_name = institution_name
        self._max_pixels = max_pixels  # the receive limit bounds the decoder too (a file stored before)

    def analyze(
        self, source: pydicom.Dataset, *, series: ResultSeries | None = None, instance_number: int = 1
    ) -> list[pydicom.Dataset]:
        from node.results import ResultSettings, build_result_objects
        from pipelines.image import load_dicom

        try:
            image = load_dicom(source, max_pixels=self._max_pixels)
        except Exception as exc:
            raise AnalysisStageError("decode", exc) from exc
        try:
            result = self._pipeline.analyze(image)
        except Exception as exc:
            raise AnalysisStageError("analyse", exc) from exc
        settings = ResultSettings(institution_name=self._institution_name or None)
        try:
            return list(build_result_objects(source, result, settings=settings, image=image,
                                             series=series, instance_number=instance_number))
        except Exception as exc:
            raise AnalysisStageError("write", exc) from exc

    def models(self) -> list[dict[str, str]]:
        """Task, name and version of every loaded model (what ``cxr-node status`` shows)."""
        p = self._pipeline
        tasks: list[tuple[str, Any]] = [("projection", p.projection), ("lungs", p.lungs), ("covid", p.covid),
                 ("ggo_detection", p.ggo_detection), ("ggo_segmentation", p.ggo_segmentation)]
        found = [(task, model.bundle.info) for task, model in tasks]
        if p.covid.input_lungs is not None:
            found.append(("covid_input_lungs", p.covid.input_lungs.bundle.info))
        return [{"task": task, "name": info.name, "version": info.version} for task, info in found]

    @property
    def device(self) -> str:
        return str(self._pipeline.device)


def chest_analyzer_factory(config: NodeConfig) -> Callable[[], Analyzer]:
    def factory() -> Analyzer:
        return ChestAnalyzer(config.models_dir, config.pipeline.device, config.pipeline.institution_name,
                             config.pipeline.use_view_position, config.pipeline.use_body_part,
                             config.pipeline.use_lung_field, config.node.max_pixels)

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


def load_models(config: NodeConfig, factory: Callable[[], Analyzer], stop: threading.Event) -> Analyzer:
    """Load the pipeline at start-up, before anything is accepted.

    ``[worker].load_retry_seconds`` = 0 (the default): a failure raises ModelsUnavailableError naming
    the folder, and the process exits non-zero. > 0: the process waits for the models (a volume
    mounted after start), trying again after that many seconds, its listener still closed; ``stop``
    ends the wait (also with ModelsUnavailableError).
    """
    folder = config.models_dir.resolve()
    retry = config.worker.load_retry_seconds
    while True:
        started = time.monotonic()
        try:
            analyzer = factory()
        except Exception as exc:  # noqa: BLE001 - any reason is reported with the folder
            message = (f"cannot load the models from {folder} ([pipeline].models_dir in {config.source}): "
                       f"{safe_message(exc)}")
            if retry <= 0:
                raise ModelsUnavailableError(message) from exc
            log_event(log, "models.waiting", logging.ERROR, models_dir=str(folder), error=safe_message(exc),
                      retry_seconds=retry)
            if stop.wait(retry):
                raise ModelsUnavailableError(f"stopped while waiting for the models in {folder}") from exc
            continue
        log_event(log, "models.loaded", models_dir=str(folder), seconds=time.monotonic() - started,
                  models=",".join(f"{m['name']}:{m['version']}" for m in analyzer_models(analyzer)) or "-")
        return analyzer


def analyzer_models(analyzer: Analyzer) -> list[dict[str, str]]:
    """What :meth:`ChestAnalyzer.models` reports; an analyzer without it (a test stand-in) has none."""
    models = getattr(analyzer, "models", None)
    return list(models()) if callable(models) else []


def worker_owner(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{index}"


def retry_delay(attempts: int) -> float:
    """Backoff before a failed job is tried again: 5 s, 10 s, 20 s ... capped at 5 min."""
    return float(min(300, 5 * 2 ** max(0, attempts - 1)))


def _is_transient(exc: BaseException) -> bool:
    """Database and store I/O faults may pass; anything else about an image will happen again."""
    if isinstance(exc, (TransientJobError, DatabaseError)):
        return True
    if isinstance(exc, StoreError):  # an unreadable store file is I/O; a file pydicom refuses is not
        return not isinstance(exc.__cause__, InvalidDicomError)
    return False


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
        """Take the pipeline from the factory (already loaded at start-up by :func:`load_models`)."""
        try:
            self.analyzer = self.analyzer_factory()
        except Exception as exc:  # a broken bundle must not crash the thread silently
            self.load_error = safe_message(exc)
            log_event(log, "worker.load_failed", logging.ERROR, owner=self.owner,
                      models_dir=str(self.config.models_dir), error=self.load_error)
            return False
        return True

    def run(self) -> None:
        while self.analyzer is None:
            if self.load():
                break
            if self.stop_event.wait(max(1.0, self.config.worker.load_retry_seconds)):
                return
        log_event(log, "worker.ready", owner=self.owner)
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
        """Run one claimed job to done / queued-for-retry / failed / released; returns the state.

        The result files an attempt writes are removed again unless the transaction that records
        their rows with the job commits (:meth:`_discard`): the store never keeps a file that no
        row names, whatever step fails.
        """
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
        written: list[InstanceRecord] = []  # this attempt's result files, durable, rows not committed
        committed = unknown = False
        try:
            try:
                with LeaseKeeper(self.repo, job.id, self.owner, self.config.worker.lease_seconds) as lease:
                    outcome = self._analyse_job(job, lease, written)
            except Exception as exc:  # transient (or a fault of the node itself): retried with a backoff
                return self._fail(job, safe_message(exc), retry=True, started=started)
            if outcome is None:
                self.repo.release_job(job.id, self.owner)
                log_event(log, "job.released", job_id=job.id, study=job.study_instance_uid, owner=self.owner)
                return "queued"
            failures, n_images = outcome
            note = "\n".join(str(f) for f in failures)  # one line per image: "<uid>: <stage>: <reason>"
            if failures and len(failures) == n_images and not written:
                # no image analysed and no "not analysed" report made: nothing to send, and the
                # reasons will not change, so no retry
                return self._fail(job, note, retry=False, started=started)
            names = [d.name for d in self.config.destinations]
            try:
                committed = self.repo.finish_job(job.id, self.owner, written, names, note=note)
            except DatabaseError as exc:  # committed or not? _discard asks the database first
                unknown = True
                self._discard(job, written, check_rows=True)
                return self._fail(job, safe_message(exc), retry=True, started=started)
            if not committed:
                log_event(log, "job.lease_lost", logging.WARNING, job_id=job.id, study=job.study_instance_uid)
                return "lost"
        finally:
            if not committed and not unknown:
                self._discard(job, written, check_rows=False)
        self.jobs_done += 1
        log_event(
            log,
            "job.done",
            job_id=job.id,
            study=job.study_instance_uid,
            accession=job.accession_number,
            results=len(written),
            deliveries=len(written) * len(names),
            images_failed=len(failures),
            images=n_images,
            seconds=time.monotonic() - started,
        )
        return "done"

    def _discard(self, job: ClaimedJob, records: list[InstanceRecord], *, check_rows: bool) -> None:
        """Remove the result files of an attempt whose rows were not committed.

        ``check_rows``: the commit failed in a way that may still have committed it (a connection
        lost during COMMIT), so a file is removed only when the database says it has no row; when
        the database cannot say, the file stays (a row naming a missing file would be worse than
        a file no row names).
        """
        removable: list[str] = []
        for record in records:
            if check_rows:
                try:
                    has_row = self.repo.find_instance(record.sop_instance_uid) is not None
                except DatabaseError:
                    has_row = True
                if has_row:
                    continue
            removable.append(record.path)
        removed, not_removed = self._remove_files(removable)
        kept = len(records) - len(removable) + not_removed
        if records:
            log_event(log, "job.results_discarded", logging.WARNING if kept else logging.INFO, job_id=job.id,
                      removed=removed, kept=kept)

    def _remove_files(self, relpaths: list[str]) -> tuple[int, int]:
        """Remove result files whose rows will not be committed: (removed, not removed). A file that
        cannot be removed is logged and stays (no row names it); one already gone counts as neither."""
        removed = not_removed = 0
        for relpath in relpaths:
            try:
                removed += self.store.remove(relpath)
            except StoreError as exc:
                not_removed += 1
                log_event(log, "job.result_file_not_removed", logging.ERROR, path=relpath, error=str(exc))
        return removed, not_removed

    def _fail(self, job: ClaimedJob, message: str, *, retry: bool, started: float) -> str:
        max_attempts = self.config.worker.max_attempts if retry else 0  # 0: failed at once
        try:
            state = self.repo.fail_job(job.id, self.owner, message, max_attempts, retry_delay(job.attempts))
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
            retried=retry,
            error=message,
            seconds=time.monotonic() - started,
        )
        return state

    def _analyse_job(
        self, job: ClaimedJob, lease: LeaseKeeper, written: list[InstanceRecord]
    ) -> tuple[list[ImageFailure], int] | None:
        """Analyse every image of an analysed class (node.sop_classes); None when stopping (the job
        is released, not failed).

        Appends the result records to ``written`` as their files are stored (a failed image gets
        its "not analysed" report there) and returns the images that failed (deterministically)
        and the number of images; raises on a transient fault, which fails the whole attempt.
        """
        assert self.analyzer is not None
        received = self.repo.job_instances(job.id)
        instances = [inst for inst in received if is_analysed(inst.sop_class_uid)]
        if len(instances) < len(received):
            # dose reports, presentation states, other systems' objects: kept with the study, no result
            log_event(log, "job.stored_only", job_id=job.id, study=job.study_instance_uid,
                      objects=len(received) - len(instances), images=len(instances))
        failures: list[ImageFailure] = []
        from node.results import ResultSeries

        series = ResultSeries()  # one SEG/SR/SC series for the whole study's results
        for number, inst in enumerate(instances, start=1):
            if self.stop_event.is_set():
                return None
            try:
                self._analyse_image(inst, number, series, written)
            except ImageFailure as failure:
                failures.append(failure)
                log_event(log, "image.not_analysed", logging.WARNING, job_id=job.id,
                          sop_instance_uid=failure.sop_instance_uid, stage=failure.stage,
                          error=failure.reason, retried=False)
                self._report_failure(inst, failure, number, series, written)
            if lease.lost.is_set():
                raise TransientJobError(f"lease on job {job.id} lost while analysing")
        return failures, len(instances)

    def _analyse_image(self, inst: InstanceRecord, number: int, series: ResultSeries,
                       written: list[InstanceRecord]) -> None:
        """Store one image's result objects into ``written``; ImageFailure (deterministic) or a
        transient error otherwise."""
        assert self.analyzer is not None
        uid = escape_control(inst.sop_instance_uid)
        try:
            source = self.store.read(inst.path)
        except Exception as exc:
            if _is_transient(exc):
                raise TransientJobError(f"{uid}: {safe_message(exc)}") from exc
            cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc
            values = identity_values_from_file(self.store.path(inst.path))
            raise ImageFailure(uid, "read", safe_message(cause, values)) from None
        values = identity_values(source)
        with redacting(values):
            try:
                outputs = self.analyzer.analyze(source, series=series, instance_number=number)
            except Exception as exc:
                if _is_transient(exc):
                    raise TransientJobError(f"{uid}: {safe_message(exc, values)}") from exc
                stage, cause = ((exc.stage, exc.cause) if isinstance(exc, AnalysisStageError)
                                else ("analyse", exc))
                raise ImageFailure(uid, stage, safe_message(cause, values)) from None
            written.extend(self._store_results(outputs, inst, uid, values))

    def _report_failure(self, inst: InstanceRecord, failure: ImageFailure, number: int, series: ResultSeries,
                        written: list[InstanceRecord]) -> None:
        """Store the failed image's "not analysed" SR (node.results.sr), so that a reader sees in the
        viewer that this image has no AI result and why; the reason is the job's (PHI-free) one.

        The report is built from the image's own header (:func:`read_failed_header`), never from
        another image of the study: when that header cannot be read or does not match the image's
        row, no report is made and the reason stays in the job and ``cxr-node status`` only.
        """
        from node.results import ResultSettings
        from node.results.sr import not_analysed_report

        values: set[str] = set()
        try:
            header = read_failed_header(self.store.path(inst.path))
            values = identity_values(header)
            with redacting(values):
                if (str(header.get("SOPInstanceUID", "")) != inst.sop_instance_uid
                        or str(header.get("StudyInstanceUID", "")) != inst.study_instance_uid):
                    raise ValueError("the header's SOP Instance or Study Instance UID differs from its row")
                # the reason was redacted with what was known when it failed; the header read now
                # may know more (a file whose full read failed): redact with that too
                text = escape_control(redact(failure.reader_text(), values))
                report = not_analysed_report(
                    header, text, series=series, instance_number=number,
                    settings=ResultSettings(institution_name=self.config.pipeline.institution_name or None))
        except Exception as exc:  # noqa: BLE001 - any reason: no report, the job still says why
            log_event(log, "image.no_report", logging.WARNING, sop_instance_uid=failure.sop_instance_uid,
                      error=safe_message(exc, values))
            return
        with redacting(values):
            try:
                written.extend(self._store_results([report], inst, failure.sop_instance_uid, values))
            except ImageFailure as store_failure:
                log_event(log, "image.no_report", logging.WARNING, sop_instance_uid=failure.sop_instance_uid,
                          error=store_failure.reason)

    def _store_results(self, outputs: list[pydicom.Dataset], source: InstanceRecord, uid: str,
                       values: set[str]) -> list[InstanceRecord]:
        """One image's result objects written durably (node.ingest.commit.store_result); their rows
        are committed later, with the job. All or none: when one file fails, the image's files
        already written are removed before the error goes up (TransientJobError for I/O and
        database faults, ImageFailure at stage "store" otherwise)."""
        records: list[InstanceRecord] = []
        for ds in outputs:
            try:
                records.append(store_result(self.store, ds, accession_number=source.accession_number))
            except Exception as exc:
                self._remove_files([r.path for r in records] + _final_path(self.store, ds))
                if _is_transient(exc) or isinstance(exc, OSError):
                    raise TransientJobError(f"{uid}: {safe_message(exc, values)}") from exc
                raise ImageFailure(uid, "store", safe_message(exc, values)) from None
        return records


# Groups of a header that a "not analysed" report copies (up to Image Pixel, 0028): read alone, they
# leave out the Pixel Data and the later groups where a data set nested too deeply usually sits.
_LAST_HEADER_GROUP = 0x0028


def read_failed_header(path: Path) -> pydicom.Dataset:
    """The header of a stored image (groups up to 0028, no Pixel Data), for its "not analysed" report.

    Raises whatever pydicom raises on it (RecursionError for nesting within those groups too).
    """
    with open(path, "rb") as f:
        return pydicom.filereader.read_partial(
            f, stop_when=lambda tag, _vr, _length: tag.group > _LAST_HEADER_GROUP)


def _final_path(store: InstanceStore, ds: pydicom.Dataset) -> list[str]:
    """Where a result object that failed while being made durable may already lie (after its rename)."""
    try:
        return [store.relpath(str(ds.SOPInstanceUID))]
    except (StoreError, AttributeError):
        return []


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
