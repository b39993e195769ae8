"""Fixtures of the training tests.

Heavy work (torch, MONAI, ultralytics, the tiny trainings) happens once per session in fixtures,
imported lazily, so that collecting the tests costs nothing and the metric/adapter tests stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # minitrees.py, tiny_runs.py


@pytest.fixture(scope="session")
def training_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="session")
def yolo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics configured offline in a temporary state folder (once per process)."""
    import os

    from pipelines.yolo_env import prepare_ultralytics

    state = tmp_path_factory.mktemp("cxr-node-state")
    os.environ.setdefault("CXR_NODE_STATE_DIR", str(state))
    prepare_ultralytics(state)
    return state
