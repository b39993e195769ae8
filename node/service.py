"""Wires the stages of ``cxr-node serve``: listener -> scheduler -> worker(s) -> delivery.

With analysis workers, the models are loaded first (node.worker.load_models): a node that
cannot load them exits with an error naming the folder before its listener opens, so it never
acknowledges a study it cannot analyse.

Each stage is a thread with its own loop and reads its work from the database, so any stage
can stop and restart alone and a restarted node resumes queued jobs and pending deliveries
from the tables. Shutdown (SIGTERM/SIGINT) runs in the reverse order of the data flow: stop
accepting associations (the running ones finish their current C-STORE and are closed), commit
what is waiting, let the workers finish the current image and release their job, let the
delivery loop finish its current association.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from node.audit import open_audit_trail
from node.config import NodeConfig
from node.delivery import DeliveryLoop
from node.ingest import GroupCommitter
from node.ingest.outcomes import ReceiveOutcomes
from node.listener_pool import ListenerPool
from node.logs import log_event
from node.orphans import sweep_in_background
from node.process import open_committer, open_repository, open_store, stop_on_signals
from node.retention import RetentionLoop
from node.scheduler import Scheduler
from node.scp import Listeners, StoreHandler, start_listener
from node.worker import (
    Analyzer,
    Worker,
    analyzer_models,
    chest_analyzer_factory,
    load_models,
    start_worker_threads,
)
from node.worker_registry import ProcessRecord

log = logging.getLogger("node.service")

LISTENER_GRACE = 10.0  # seconds running associations get to end when the node stops


class NodeService:
    """The whole node in one process (the default deployment)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        analyzer_factory: Callable[[], Analyzer] | None = None,
        workers: int | None = None,
        listen: bool = True,
        deliver: bool = True,
        schedule: bool = True,
    ) -> None:
        self.config = config
        self.repo = open_repository(config)
        self.store = open_store(config)
        self.analyzer_factory = analyzer_factory or chest_analyzer_factory(config)
        self.n_workers = config.worker.workers if workers is None else workers
        self.listen, self.deliver, self.schedule = listen, deliver, schedule
        self.stop_event = threading.Event()
        self.job_wake = threading.Event()
        self.delivery_wake = threading.Event()
        self.committer: GroupCommitter | None = None
        self.handler: StoreHandler | None = None
        self.server: Listeners | None = None
        self.pool: ListenerPool | None = None  # [node] listener_processes > 1
        self.scheduler: Scheduler | None = None
        self.workers: list[tuple[Worker, threading.Thread]] = []
        self.delivery_thread: threading.Thread | None = None
        self.retention_thread: threading.Thread | None = None
        self.analyzer: Analyzer | None = None
        self.process_record: ProcessRecord | None = None
        self.http: Any = None  # node.http.app.HttpServer when [http] port > 0

    def start(self, stop_waiting: threading.Event | None = None) -> None:
        """Load the models (when this process analyses), then open the stages in data-flow order.

        Raises ModelsUnavailableError (nothing started) when the models cannot be loaded;
        ``stop_waiting`` ends a wait for them (``[worker].load_retry_seconds`` > 0).
        """
        removed = self.store.remove_temporaries()
        threading.Thread(target=sweep_in_background, args=(self.repo, self.store), name="orphan-sweep",
                         daemon=True).start()
        log_event(
            log,
            "node.starting",
            ae_title=self.config.node.ae_title,
            port=self.config.node.port,
            database=self.repo.engine.dialect.name,
            durability=self.config.node.durability,
            destinations=",".join(d.name for d in self.config.destinations) or "-",
            workers=self.n_workers,
            retention_days=self.config.node.retention_days,
            stale_temporaries_removed=removed,
        )
        if self.n_workers > 0:
            self.analyzer = load_models(self.config, self.analyzer_factory, stop_waiting or self.stop_event)
            self.process_record = ProcessRecord(
                self.repo.engine, "serve", self.n_workers, str(getattr(self.analyzer, "device", "")),
                str(self.config.models_dir.resolve()), analyzer_models(self.analyzer))
            self.process_record.register()
        if self.listen and self.config.listener_process_count > 1:
            self.pool = ListenerPool(self.config, ReceiveOutcomes(), grace=LISTENER_GRACE)
            self.pool.start()
        elif self.listen:
            self.committer = open_committer(self.config, self.repo)
            self.handler = StoreHandler(self.config, self.store, self.committer)
            self.server = start_listener(self.config, self.handler)
        if self.schedule:
            self.scheduler = Scheduler(self.repo, self.config.node.study_stable_seconds, wake=self.job_wake)
            self.scheduler.start()
        if self.n_workers > 0:
            loaded = self.analyzer
            self.workers = start_worker_threads(
                self.config,
                self.repo,
                self.store,
                lambda: loaded,  # type: ignore[arg-type,return-value]
                self.n_workers,
                self.stop_event,
                self.job_wake,
            )
        if self.deliver and self.config.destinations:
            loop = DeliveryLoop(self.config, self.repo, self.store, self.stop_event, self.delivery_wake)
            self.delivery_thread = threading.Thread(target=loop.run, name="delivery", daemon=True)
            self.delivery_thread.start()
        if self.schedule and self.config.node.retention_days > 0:
            retention = RetentionLoop(self.repo, self.store, self.config.node.retention_days,
                                      self.config.node.retention_check_seconds, self.stop_event,
                                      audit_trail=open_audit_trail(self.config),
                                      node_aet=self.config.node.ae_title)
            self.retention_thread = threading.Thread(target=retention.run, name="retention", daemon=True)
            self.retention_thread.start()
        if self.config.http.port > 0:
            self._start_http()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; every join is bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        log_event(log, "node.stopping")
        if self.http is not None:  # no new STOW-RS; the requests in flight finish their commits
            self.http.stop(min(10.0, timeout / 3))
        if self.server is not None:
            self.server.close(min(LISTENER_GRACE, timeout / 3))
        if self.pool is not None:
            self.pool.stop(timeout=max(1.0, deadline - time.monotonic()))
        if self.committer is not None:
            self.committer.stop(timeout=max(0.1, deadline - time.monotonic()))
        if self.scheduler is not None:
            self.scheduler.stop(timeout=max(0.1, deadline - time.monotonic()))
        self.stop_event.set()
        self.job_wake.set()
        self.delivery_wake.set()
        for _worker, thread in self.workers:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.delivery_thread is not None:
            self.delivery_thread.join(max(0.1, deadline - time.monotonic()))
        if self.retention_thread is not None:
            self.retention_thread.join(max(0.1, deadline - time.monotonic()))
        if self.process_record is not None:
            self.process_record.remove()
        self.repo.engine.dispose()
        log_event(log, "node.stopped")

    def _start_http(self) -> None:
        """The HTTP face (node.http): STOW-RS shares the listener's group committer (or gets one).

        Imported here, not at module level: the CLI commands that open the repository through this
        module (status, resend, purge) would otherwise load the web stack and the model metadata.
        """
        from node.http.app import HttpContext, HttpServer
        from node.http.health import workers_ready

        if self.committer is None:
            self.committer = open_committer(self.config, self.repo)
        context = HttpContext(self.config, self.repo, self.store, self.committer,
                              models_ready=lambda: workers_ready(self.workers))
        if self.handler is not None:
            context.outcomes = self.handler.outcomes  # C-STORE refusals in /metrics
        elif self.pool is not None:
            context.outcomes = self.pool.outcomes  # those of the listener processes
        self.http = HttpServer(context)
        self.http.start()

    def run_until_signal(self) -> int:
        """Start, wait for SIGTERM/SIGINT, stop; returns the exit status (0)."""
        stopping = stop_on_signals(log, "node.signal")
        self.start(stop_waiting=stopping)
        while not stopping.wait(1.0):
            if self.process_record is not None:
                self.process_record.beat()
        self.stop()
        return 0
