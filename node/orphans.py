"""Instance files that no row names: removed once they are old enough that nobody is about to commit one.

A file reaches its final name before its row is committed (node.ingest.commit: file durable, then
row). When the process is killed in between, or the commit fails, the file stays without a row: a
received instance that was never acknowledged (its sender sends it again), or a result object of a
job attempt that did not finish (the next attempt writes new ones). Nothing ever reads such a file,
but it takes disk space and breaks the rule that the store and the database agree. ``serve`` sweeps
once at start, in the background; files younger than :data:`GRACE_SECONDS` are left alone, since on
a shared store (PostgreSQL, several machines) another process may be between its rename and its
commit right now.
"""

from __future__ import annotations

import logging
import time

from node.errors import DatabaseError, StoreError
from node.logs import log_event
from node.repository import Repository
from node.store import InstanceStore

log = logging.getLogger("node.orphans")

GRACE_SECONDS = 3600.0
_CHUNK = 500


def remove_orphan_files(repo: Repository, store: InstanceStore, *, grace_seconds: float = GRACE_SECONDS,
                        now: float | None = None) -> int:
    """Remove the instance files older than the grace period that no row names; returns how many."""
    cutoff = (time.time() if now is None else now) - grace_seconds
    removed = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal removed
        known = repo.known_paths(batch)
        for relpath in batch:
            if relpath not in known and store.remove(relpath):
                removed += 1
        batch.clear()

    for relpath in store.files_older_than(cutoff):
        batch.append(relpath)
        if len(batch) >= _CHUNK:
            flush()
    if batch:
        flush()
    return removed


def sweep_in_background(repo: Repository, store: InstanceStore) -> None:
    """One sweep, logged; a database or store fault is logged and left for the next start."""
    try:
        removed = remove_orphan_files(repo, store)
    except (DatabaseError, StoreError, OSError) as exc:
        log_event(log, "store.orphan_sweep_failed", logging.WARNING, error=f"{exc.__class__.__name__}: {exc}")
        return
    if removed:
        log_event(log, "store.orphans_removed", logging.WARNING, files=removed,
                  older_than_seconds=GRACE_SECONDS)
