"""What every node process opens: the repository, the store, the group committer, and the signals
that stop it.

Shared by ``serve``, ``worker``, the listener processes (node.listener_pool) and the CLI commands
that read the database, without importing the worker's model stack.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from node.config import DEFAULTS_SOURCE, NodeConfig
from node.errors import NoNodeDataError
from node.ingest import GroupCommitter
from node.logs import log_event
from node.repository import Repository, make_engine
from node.store import InstanceStore


def stop_on_signals(logger: logging.Logger, event: str) -> threading.Event:
    """An Event set by SIGTERM or SIGINT (logged as ``event``): the process then stops in order."""
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log_event(logger, event, signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stopping


def open_repository(config: NodeConfig, create: bool = True) -> Repository:
    if not config.node.database_url:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        config.database_url, durability=config.node.durability, schema=config.node.database_schema
    )
    repo = Repository(engine)
    if create:
        repo.create_schema()
    return repo


def open_existing_repository(config: NodeConfig) -> Repository:
    """The repository of a node that has run, for the operator commands (status, resend, purge):
    an SQLite file that does not exist is an error naming it, not a new empty database."""
    path = config.sqlite_path
    if path is not None and not path.exists():
        where = "the working directory" if config.source == DEFAULTS_SOURCE else "the configuration's folder"
        raise NoNodeDataError(f"no node database at {path} (data_dir is relative to {where}): run it "
                              "where `cxr-node serve` runs, or with the node's --config")
    return open_repository(config)


def open_store(config: NodeConfig) -> InstanceStore:
    return InstanceStore(
        config.data_dir / "instances",
        fsync=config.node.durability == "fsync",
        min_free_bytes=config.node.min_free_disk_mb * 2**20,
    )


def open_committer(config: NodeConfig, repo: Repository) -> GroupCommitter:
    """The group committer of a receiving process (the listener's C-STORE handler, STOW-RS)."""
    return GroupCommitter(repo, batch_max=config.node.commit_batch_max, timeout=config.node.dimse_timeout)
