"""Which processes analyse, with which models: the ``analysis_processes`` table.

``serve`` (with worker threads) and ``cxr-node worker`` write one row when their models are loaded
and refresh ``seen_at`` every :data:`BEAT_SECONDS`; a clean stop removes it. ``cxr-node status``
lists the rows, so an operator sees the model names and versions the node runs, on every machine
sharing the database; a row not refreshed for :data:`STALE_SECONDS` belongs to a process that died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from node.db import AnalysisProcess
from node.errors import DatabaseError

TABLE: Table = AnalysisProcess.__table__  # type: ignore[assignment]
BEAT_SECONDS = 60.0
STALE_SECONDS = 3 * BEAT_SECONDS


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect().execution_options(cxr_write=True) as conn, conn.begin():
            yield conn
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database write failed: {exc.__class__.__name__}: {exc}") from exc


class ProcessRecord:
    """This process's row: :meth:`register` once the models are loaded, :meth:`beat`, :meth:`remove`."""

    def __init__(self, engine: Engine, role: str, threads: int, device: str, models_dir: str,
                 models: list[dict[str, str]], owner: str | None = None) -> None:
        self.engine, self.owner = engine, owner or process_owner()
        self.row = {"owner": self.owner, "role": role, "threads": threads, "device": device,
                    "models_dir": models_dir, "models": json.dumps(models)}
        self._last_beat = 0.0

    def register(self) -> None:
        now = time.time()
        values = self.row | {"started_at": now, "seen_at": now}
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        stmt = dialect.insert(TABLE).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["owner"], set_=values)
        with _write(self.engine) as conn:
            conn.execute(stmt)
        self._last_beat = time.monotonic()

    def beat(self, force: bool = False) -> None:
        """Refresh ``seen_at`` (at most every BEAT_SECONDS); a database fault is left to the next beat."""
        if not force and time.monotonic() - self._last_beat < BEAT_SECONDS:
            return
        try:
            with _write(self.engine) as conn:
                updated = conn.execute(update(TABLE).where(TABLE.c.owner == self.owner)
                                       .values(seen_at=time.time())).rowcount
            if not updated:
                self.register()
            self._last_beat = time.monotonic()
        except DatabaseError:
            pass

    def remove(self) -> None:
        try:
            with _write(self.engine) as conn:
                conn.execute(delete(TABLE).where(TABLE.c.owner == self.owner))
        except DatabaseError:
            pass  # the row goes stale; status says so


def list_processes(engine: Engine, now: float | None = None) -> list[dict[str, Any]]:
    """Every registered analysis process, newest first, with ``stale`` when its heartbeat stopped."""
    now = time.time() if now is None else now
    try:
        with engine.connect() as conn, conn.begin():
            rows = conn.execute(select(TABLE).order_by(TABLE.c.started_at.desc())).all()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database read failed: {exc.__class__.__name__}: {exc}") from exc
    out = []
    for r in rows:
        item = dict(r._mapping)
        try:
            item["models"] = json.loads(item["models"] or "[]")
        except ValueError:
            item["models"] = []
        item["stale"] = now - float(item["seen_at"]) > STALE_SECONDS
        out.append(item)
    return out
