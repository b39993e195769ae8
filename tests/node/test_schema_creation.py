"""Regression: ``serve`` and ``worker`` processes starting together must not fail creating the schema.

Seen in the full suite: the system test's worker process created the tables while ``serve`` did,
and ``serve`` died with "database is locked" (SQLite upgrades a read transaction to a write one by
failing at once, whatever the busy timeout). On PostgreSQL, concurrent ``CREATE SCHEMA IF NOT
EXISTS`` / ``CREATE TABLE`` collide on the catalogue's unique indexes.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from nodekit import PG_URL
from sqlalchemy import inspect

from node.repository import Repository, make_engine

PROCESSES = 4


def _create(url: str, schema: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    repo = Repository(make_engine(url, schema=schema))
    barrier.wait(timeout=30)
    repo.create_schema()


def _race(url: str, schema: str) -> list[int | None]:
    ctx = multiprocessing.get_context("spawn")  # no inherited connections or locks
    barrier = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_create, args=(url, schema, barrier)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    return [p.exitcode for p in procs]


@pytest.mark.slow  # over ~3 s: make test runs it
def test_concurrent_schema_creation_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.sqlite3'}"
    assert _race(url, "") == [0] * PROCESSES
    assert {"instances", "jobs", "deliveries"} <= set(inspect(make_engine(url)).get_table_names())


@pytest.mark.postgres
def test_concurrent_schema_creation_on_postgresql(pg_schema: str) -> None:
    assert _race(PG_URL, pg_schema) == [0] * PROCESSES
