"""Fixtures of the node tests: free ports, synthetic DX images, node processes, real peers.

The random model bundles are written ONCE per session by a background process started at the
first test that needs the node's worker, so the ~20 s of torch/MONAI imports overlap with the
tests that need no model.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import PG_URL, REPO, NodeProcess


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    started: list[NodeProcess] = []

    def make(toml: str, name: str = "node") -> NodeProcess:
        config = tmp_path / f"{name}.toml"
        config.write_text(toml)
        port = int(toml.split("port = ", 1)[1].split("\n", 1)[0])
        node = NodeProcess(config, port, tmp_path / f"{name}.log")
        started.append(node)
        return node

    yield make
    for node in started:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()


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


@pytest.fixture(scope="session", autouse=True)
def _bundles_in_background(request: pytest.FixtureRequest, bundle_root: Path) -> Iterator[None]:
    """Start writing the bundles at session start if any selected test needs them."""
    if any("models_dir" in getattr(item, "fixturenames", ()) for item in request.session.items):
        _start_bundles(bundle_root)
    yield
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
