"""Study completeness: a study becomes a job once no instance arrived for ``study_stable_seconds``.

DICOM has no "end of study" message (a modality may send a study over several associations,
PS3.4 B.2 only defines single-instance storage), so completeness is a quiet period. Instances
that arrive after their study's job was created have no job yet and form the next job of that
study when the study goes quiet again: nothing is dropped, nothing is analysed twice.
"""

from __future__ import annotations

import logging
import threading
import time

from node.errors import DatabaseError
from node.logs import log_event
from node.repository import Repository

log = logging.getLogger("node.scheduler")


class Scheduler:
    """Polls the database and creates jobs; runs in one thread of ``serve``."""

    def __init__(self, repo: Repository, stable_seconds: float, wake: threading.Event | None = None) -> None:
        self.repo = repo
        self.stable_seconds = stable_seconds
        # Poll often enough that a study waits at most ~25 % longer than the quiet period.
        self.interval = min(1.0, max(0.05, stable_seconds / 4))
        self.wake = wake  # set when jobs were created, so that workers do not wait a poll period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[int]:
        jobs = self.repo.schedule_stable_studies(time.time(), self.stable_seconds)
        for job_id in jobs:
            log_event(log, "study.scheduled", job_id=job_id)
        if jobs and self.wake is not None:
            self.wake.set()
        return jobs

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except DatabaseError as exc:  # keep polling: the database may come back
                log_event(log, "scheduler.error", logging.ERROR, error=str(exc))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
