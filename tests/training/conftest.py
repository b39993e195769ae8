"""Fixtures of the training tests.

Heavy work (torch, MONAI, ultralytics, the tiny trainings) happens once per session in fixtures,
imported lazily, so that collecting the tests costs nothing and the metric/adapter tests stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipelines.yolo_env import prepare_ultralytics

sys.path.insert(0, str(Path(__file__).parent))  # minitrees.py, tiny_runs.py


@pytest.fixture(scope="session")
def training_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="session")
def yolo_state(state_dir: Path) -> Path:
    """ultralytics configured offline in the session's state folder (tests/conftest.py), the one
    the node and pipeline tests in this process use too (ultralytics reads it once per process)."""
    prepare_ultralytics(state_dir)  # the GGO trainer's later prepare_ultralytics(None) keeps this folder
    return state_dir


@pytest.fixture(scope="session")
def tiny_models(training_root: Path, shared_data: Path, yolo_state: Path) -> dict[str, Path]:
    """One tiny bundle per task (one epoch, 64 px, real images), plus a lungs-only COVID model
    whose lung masks come from the tiny lungs bundle. Returns task -> bundle folder."""
    from tiny_runs import tiny_config

    from training.config import config_from_dict
    from training.run import train_from_config

    out = training_root / "runs"
    bundles: dict[str, Path] = {}
    for task in ("lungs", "projection", "covid", "ggo_segmentation", "ggo_detection"):
        bundle = train_from_config(config_from_dict(tiny_config(task, out, shared_data)), device="cpu")
        assert bundle is not None
        bundles[task] = bundle
    lungs_only = tiny_config("covid", out, shared_data, input__mode="lungs_only")
    lungs_only["run"]["name"] = "tiny-covid-lungs-only"
    lungs_only["model"] = {"architecture": "vgg19", "params": {"width": 4, "dropout": 0.0}}
    lungs_only["run"]["lung_bundle"] = str(bundles["lungs"])
    bundles["covid_lungs_only"] = train_from_config(config_from_dict(lungs_only), device="cpu")  # type: ignore[assignment]
    return bundles


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_models: dict[str, Path], training_root: Path) -> Path:
    """The five bundles in one models folder, as the node's pipeline expects them."""
    models = training_root / "models"
    models.mkdir(exist_ok=True)
    for task, bundle in tiny_models.items():
        if task != "covid_lungs_only":
            (models / bundle.name).symlink_to(bundle, target_is_directory=True)
    return models
