"""The tiny random model bundles that the node and the pipeline tests both run on.

Written once per test process: in a session that collects the pipeline and training tests, torch
and MONAI are loaded already, so writing them here takes about a second, where a separate process
took about ten (importing them again). A module of its own rather than tests/conftest.py: the root
conftest is loaded by the pytest-xdist controller too, which would import torch before starting
its workers and never use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.testing import write_random_bundles

_WRITTEN: dict[str, Path] = {}


def random_models_dir(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    """The five random bundles (seed 0), written on the first call in this process.

    ``state_dir`` is ultralytics' state folder: it reads its environment once per process, so
    every caller passes the session's one folder (tests/conftest.py's ``state_dir``).
    """
    if "models" not in _WRITTEN:
        models = tmp_path_factory.mktemp("random-models")
        write_random_bundles(models, seed=0, state_dir=state_dir)
        _WRITTEN["models"] = models
    return _WRITTEN["models"]
