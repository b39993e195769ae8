"""What every part of the repository shares: the engine, its dialect and the two kinds of transaction.

Each part (instances, jobs, outbox, retention, status) is a class derived from
:class:`RepositoryBase`; :class:`node.repository.Repository` combines them, so callers hold one
object while each job's SQL lives in its own module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from node.errors import DatabaseError
from node.repository.engine import create_schema, drop_schema


class RepositoryBase:
    """The engine and its transactions; thread-safe (one pooled connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._local = threading.local()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite (see node.repository.engine)."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(cxr_write=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database write failed: {exc.__class__.__name__}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database read failed: {exc.__class__.__name__}: {exc}") from exc

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """The dialect's INSERT, which has ON CONFLICT and RETURNING on both databases."""
        return sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)

    def create_schema(self) -> None:
        """Create missing tables: :func:`node.repository.engine.create_schema`."""
        create_schema(self.engine)

    def drop_schema(self) -> None:
        """Tests only: drop every table of the node."""
        drop_schema(self.engine)
