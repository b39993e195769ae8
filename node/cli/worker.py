"""``cxr-node worker``: analysis workers only, against a shared database (scale-out).

Runs on another machine (or in another process) beside one ``cxr-node serve``; it needs the
same configuration file, the same ``data_dir`` (a shared file system, the instance files are
read and result files written there) and ``database_url`` pointing at the shared PostgreSQL.
Jobs are claimed with ``FOR UPDATE SKIP LOCKED``, so any number of workers can run.

The models are loaded before the first job is claimed; when they cannot be, the process exits
with status 1 and a message naming the folder (or waits for them with
``[worker].load_retry_seconds`` > 0). Its models are listed by ``cxr-node status``.
"""

from __future__ import annotations

import argparse
import sys
import threading

from node.config import load_config
from node.errors import NodeError
from node.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--threads", type=int, default=1, help="worker threads sharing one loaded pipeline")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except NodeError as exc:
        print(f"cxr-node worker: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.node.log_level, config.node.log_format)
    import logging

    from node.process import open_repository, open_store, stop_on_signals
    from node.worker import analyzer_models, chest_analyzer_factory, load_models, start_worker_threads
    from node.worker_registry import ProcessRecord

    stop = stop_on_signals(logging.getLogger("node.worker"), "worker.signal")
    try:
        repo = open_repository(config)
        store = open_store(config)
    except NodeError as exc:
        print(f"cxr-node worker: {exc}", file=sys.stderr)
        return 1
    threads = max(1, args.threads)
    try:
        analyzer = load_models(config, chest_analyzer_factory(config), stop)
        record = ProcessRecord(repo.engine, "worker", threads, str(getattr(analyzer, "device", "")),
                               str(config.models_dir.resolve()), analyzer_models(analyzer))
        record.register()
    except NodeError as exc:
        repo.engine.dispose()
        if stop.is_set():  # SIGTERM while waiting for the models
            return 0
        print(f"cxr-node worker: {exc}", file=sys.stderr)
        return 1
    wake = threading.Event()
    workers = start_worker_threads(config, repo, store, lambda: analyzer, threads, stop, wake)
    while not stop.wait(1.0):
        record.beat()
        if not any(t.is_alive() for _w, t in workers):
            print(
                "cxr-node worker: every worker thread ended (see the log: pipeline not loadable?)",
                file=sys.stderr,
            )
            return 1
    wake.set()
    for _worker, thread in workers:
        thread.join(30)
    record.remove()
    repo.engine.dispose()
    return 0
