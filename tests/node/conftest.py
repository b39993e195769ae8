"""Fixtures of the node tests: random model bundles, the running system, PostgreSQL schemas.

Loading torch/MONAI dominates the node tests' time, so it is started early and overlapped:
when the session includes test_system.py, the first node test starts (1) a background process
writing the tiny random bundles and (2) the system under test -- ``cxr-node serve`` with its
in-process worker plus one ``cxr-node worker`` process -- whose workers import the pipeline
while the other tests run and load the bundles as soon as they are complete (the worker
retries loading every second in the test configuration).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import PG_URL, REPO, System

from node.repository import Repository, make_engine

# -- random model bundles, written once in the background ------------------------------------
_BUNDLES: dict[str, object] = {}


def _start_bundles(root: Path) -> None:
    if "proc" in _BUNDLES:
        return
    models = root / "models"
    code = (
        f"from pipelines.testing import write_random_bundles; write_random_bundles({str(models)!r}, seed=0)"
    )
    _BUNDLES["dir"] = models
    _BUNDLES["proc"] = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


_SYSTEM: dict[str, System] = {}


def _start_system(root: Path) -> System:
    if "system" not in _SYSTEM:
        _SYSTEM["system"] = System(root, root / "models").start()
    return _SYSTEM["system"]


@pytest.fixture(scope="session", autouse=True)
def _early_start(request: pytest.FixtureRequest, bundle_root: Path) -> Iterator[None]:
    """Start writing the bundles (and the system) at session start when a selected test needs them."""
    names = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    if "models_dir" in names or "system" in names:
        _start_bundles(bundle_root)
    if "system" in names:
        _start_system(bundle_root)
    yield
    if "system" in _SYSTEM:
        _SYSTEM.pop("system").stop()
    proc = _BUNDLES.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def models_dir(bundle_root: Path) -> Path:
    _start_bundles(bundle_root)
    proc = _BUNDLES["proc"]
    assert isinstance(proc, subprocess.Popen)
    _out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"write_random_bundles failed: {err.decode(errors='replace')[-2000:]}")
    return Path(str(_BUNDLES["dir"]))


@pytest.fixture(scope="session")
def system(bundle_root: Path, models_dir: Path) -> System:
    """The node under test (serve + one worker process), started early, bundles complete."""
    return _start_system(bundle_root)


# -- PostgreSQL: a fresh schema per test ------------------------------------------------------
@pytest.fixture
def pg_schema() -> Iterator[str]:
    from sqlalchemy import create_engine, text

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
