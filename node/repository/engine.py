"""The engine and the schema: per-connection settings on SQLite and PostgreSQL, create and drop.

Times everywhere in this package are epoch seconds from the caller's clock (machines sharing a
PostgreSQL queue must run NTP; leases are minutes, so a second of skew does not matter).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from node.db import Base
from node.errors import DatabaseError

# Any constant works: it only has to be the same in every process that creates the schema.
SCHEMA_LOCK_KEY = 0x63787231


def _enable_wal(cur: Any, *, timeout: float) -> None:
    """Switch a SQLite database to WAL, waiting while another process holds it.

    Switching the journal mode needs an exclusive lock, and SQLite answers "database is locked"
    at once instead of calling the busy handler. This happens when several processes (``serve``
    and ``worker``) open a new database at the same moment, so the switch is retried with a
    short backoff. Once a database is in WAL mode the setting persists and the PRAGMA is a no-op.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def make_engine(url: str, *, durability: str = "fsync", schema: str = "") -> Engine:
    """Create the engine with the per-connection settings the node relies on.

    SQLite: WAL (readers never block the writer), ``synchronous=FULL`` when durability is
    "fsync" (a committed row survives power loss) or NORMAL for "os" (survives a process kill),
    foreign keys on, a 30 s busy timeout, and writes in ``BEGIN IMMEDIATE`` transactions (the
    write lock is taken up front, so a read-then-write transaction never fails half-way on a
    lock upgrade). PostgreSQL: ``search_path`` set to ``schema`` when given, so that test runs
    (and several nodes) can share one database without colliding.
    """
    if url.startswith("sqlite"):
        return _sqlite_engine(url, durability)
    engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    if schema:
        _use_pg_schema(engine, schema)
    return engine


def _sqlite_engine(url: str, durability: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    sync = "FULL" if durability == "fsync" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _enable_wal(cur, timeout=30.0)
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("cxr_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _use_pg_schema(engine: Engine, schema: str) -> None:
    if not schema.replace("_", "").isalnum():
        raise DatabaseError(f"database_schema must be letters, digits and '_', got {schema!r}")

    @event.listens_for(engine, "connect")
    def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # IF NOT EXISTS is not atomic: two processes connecting at once both try to create it.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        cur.execute(f'SET search_path TO "{schema}"')
        cur.close()
        dbapi_conn.commit()


def create_schema(engine: Engine) -> None:
    """Create missing tables; safe when ``serve`` and ``worker`` processes start together.

    The check-then-create runs in one write transaction: ``BEGIN IMMEDIATE`` on SQLite (a
    read transaction upgraded to a write fails at once with "database is locked", whatever
    the busy timeout) and a transaction-scoped advisory lock on PostgreSQL (two concurrent
    CREATE TABLEs of the same name collide on the catalogue's unique index).
    """
    try:
        with engine.connect().execution_options(cxr_write=True) as conn, conn.begin():
            if engine.dialect.name != "sqlite":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            Base.metadata.create_all(conn)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot create the schema on {engine.url!r}: {exc}") from exc


def drop_schema(engine: Engine) -> None:
    """Tests only: drop every table of the node."""
    Base.metadata.drop_all(engine)
