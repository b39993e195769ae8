"""Fixtures shared by every test package: where the real public data lives, and ultralytics'
state folder for the session.

Each area (node, pipelines, results, training) keeps its own fixtures in its own
``tests/<area>/conftest.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
DICOM_SAMPLES = SHARED_DATA / "dicom_samples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public chest X-rays beside the project (see its README for the traps)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder not found: {SHARED_DATA} (set CXR_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dicom_samples(shared_data: Path) -> Path:
    return shared_data / "dicom_samples"


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics' offline state for the whole session (it reads its environment once per process,
    so every fixture that builds or loads a YOLO model in this process passes this one folder)."""
    return tmp_path_factory.mktemp("cxr-node-state")


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    """A test that calls ``setup_logging`` leaves no handler on a stream pytest closes afterwards
    (later tests' log lines would then fail with "I/O operation on closed file")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
