"""Fixtures of the node tests: the random model bundles, the running system, PostgreSQL schemas.

The random bundles come from tests/modelkit.py, written in this process and shared with the
pipeline tests. When the session includes test_system.py, its first test starts the system
under test -- ``cxr-node serve`` with its in-process worker plus one ``cxr-node worker`` process --
whose workers import the pipeline while the other tests run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelkit import random_models_dir
from nodekit import PG_URL, System
from sqlalchemy import create_engine, text

from node.repository import Repository, make_engine

_SYSTEM: dict[str, System] = {}


def _start_system(root: Path, models_dir: Path) -> System:
    if "system" not in _SYSTEM:
        _SYSTEM["system"] = System(root, models_dir).start()
    return _SYSTEM["system"]


@pytest.fixture(scope="session")
def system_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("system")


@pytest.fixture(scope="session", autouse=True)
def _early_start(request: pytest.FixtureRequest, system_root: Path) -> Iterator[None]:
    """Start the system at session start when a selected test needs it (its processes load the
    pipeline in the background)."""
    names = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    if "system" in names:
        _start_system(system_root, request.getfixturevalue("models_dir"))
    yield
    if "system" in _SYSTEM:
        _SYSTEM.pop("system").stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    """The tiny random bundles (see tests/modelkit.py)."""
    return random_models_dir(tmp_path_factory, state_dir)


@pytest.fixture(scope="session")
def system(system_root: Path, models_dir: Path) -> System:
    """The node under test (serve + one worker process), started early."""
    return _start_system(system_root, models_dir)


# -- PostgreSQL: a fresh schema per test ------------------------------------------------------
@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"cxr_test_{uuid.uuid4().hex[:12]}"
    yield schema
    engine = create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """A fresh repository on SQLite and, in the suite with PostgreSQL, on its own schema there."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'repo.sqlite3'}")
    else:
        engine = make_engine(PG_URL, schema=request.getfixturevalue("pg_schema"))
    repository = Repository(engine)
    repository.create_schema()
    yield repository
    engine.dispose()
