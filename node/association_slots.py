"""Node-wide limits on open connections (``max_associations``, ``max_associations_per_host``),
kept exactly however many listener processes accept them (node.listener_pool).

Why: a listener process sees only its own connections. Enforcing a share of each limit per
process refuses a host early whenever the kernel happens to hand its connections to one process
(two processes, a per-host limit of 8: the fifth connection that lands on the same process is
refused), which is why several listener processes could not be the default.

How: one small table in shared memory (one row per host and process with connections open),
created by the serve process and handed to each listener process when it is spawned. A new
connection is admitted under a lock when the node's total and its host's total are below their
limits. The lock between processes is an ``flock`` on a file, which the kernel releases when its
holder dies, so a listener process killed mid-update cannot stop the others; the rows of a
process that died are dropped by the pool (:meth:`AssociationSlots.forget`). Hosts are stored as
a 128-bit digest of their address, so the table has a fixed size: never more rows than the node
may have connections open.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import multiprocessing
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")


class _Row(ctypes.Structure):
    _fields_ = [("host_high", ctypes.c_uint64), ("host_low", ctypes.c_uint64), ("pid", ctypes.c_int64),
                ("open", ctypes.c_int64)]

    def holds(self, key: tuple[int, int]) -> bool:
        return bool(self.open) and (self.host_high, self.host_low) == key


@dataclass(frozen=True)
class Refusal:
    """Why a connection was not admitted: which limit, how many were open, the limit."""

    limit: str  # "max_associations" or "max_associations_per_host"
    open_connections: int
    allowed: int


def _host_key(host: str) -> tuple[int, int]:
    digest = hashlib.blake2b(host.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


class AssociationSlots:
    """Open connections of the whole node, by host and listener process (see the module doc)."""

    def __init__(self, max_total: int, max_per_host: int, lock_path: Path) -> None:
        if not 0 < max_per_host <= max_total:
            raise ValueError(f"need 0 < max_per_host ({max_per_host}) <= max_total ({max_total})")
        self.max_total = max_total
        self.max_per_host = max_per_host
        self.lock_path = Path(lock_path)
        self._rows: Any = _SPAWN.RawArray(_Row, max_total)
        self._local: threading.Lock | None = None
        self._lock_fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        """What a spawned listener process receives: the shared table and the lock file's path."""
        state = dict(self.__dict__)
        state["_local"] = None
        state["_lock_fd"] = None
        return state

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        if self._local is None:
            self._local = threading.Lock()  # flock does not exclude threads sharing one descriptor
        with self._local:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self._rows
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def admit(self, host: str) -> Refusal | None:
        """Count one more connection from ``host`` in this process, or say which limit it meets."""
        key, pid = _host_key(host), os.getpid()
        with self._locked() as rows:
            total = sum(row.open for row in rows)
            from_host = sum(row.open for row in rows if row.holds(key))
            if total >= self.max_total:
                return Refusal("max_associations", total, self.max_total)
            if from_host >= self.max_per_host:
                return Refusal("max_associations_per_host", from_host, self.max_per_host)
            free = None
            for row in rows:
                if row.holds(key) and row.pid == pid:
                    row.open += 1
                    return None
                if free is None and not row.open:
                    free = row
            assert free is not None  # fewer than max_total open, so a row is free
            (free.host_high, free.host_low), free.pid, free.open = key, pid, 1
            return None

    def release(self, host: str) -> None:
        """One connection from ``host`` in this process has closed."""
        key, pid = _host_key(host), os.getpid()
        with self._locked() as rows:
            for row in rows:
                if row.holds(key) and row.pid == pid:
                    row.open -= 1
                    return

    def forget(self, pid: int) -> int:
        """Drop the connections counted for a listener process that has died; how many there were."""
        dropped = 0
        with self._locked() as rows:
            for row in rows:
                if row.open and row.pid == pid:
                    dropped += row.open
                    row.open = 0
        return dropped

    def open_connections(self) -> int:
        with self._locked() as rows:
            return sum(row.open for row in rows)

    def close(self) -> None:
        """Close the lock file (a later call opens it again): when a listener stops."""
        if self._local is None:
            return
        with self._local:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
