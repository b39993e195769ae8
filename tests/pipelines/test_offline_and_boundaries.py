"""ultralytics stays offline and inside our folder; pipelines/ never imports the DICOM node."""

from __future__ import annotations

import ast
import os
from pathlib import Path

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def test_ultralytics_is_offline_and_inside_our_folder(random_models: Path, state_dir: Path) -> None:
    """ultralytics is prepared once per process, by whichever test loads a GGO detector first: with
    this test's folder, or (a node test that ran before) the node's default state folder."""
    from pipelines.yolo_env import default_state_dir, prepare_ultralytics

    ultralytics = prepare_ultralytics(state_dir)  # already prepared: a no-op
    from ultralytics.utils import SETTINGS, is_online

    base = Path(os.environ["YOLO_CONFIG_DIR"]).resolve().parent
    assert base in ((state_dir / "ultralytics").resolve(), (default_state_dir() / "ultralytics").resolve())
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert Path(os.environ["YOLO_CONFIG_DIR"]) == base / "config"
    assert (base / "config" / "Ultralytics" / "Arial.ttf").stat().st_size > 10_000
    assert Path(SETTINGS.file).resolve().is_relative_to(base)
    assert SETTINGS["sync"] is False
    integrations = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
    assert not any(SETTINGS[k] for k in integrations)
    for key in ("datasets_dir", "weights_dir", "runs_dir"):
        assert Path(SETTINGS[key]).resolve().is_relative_to(base), key
    assert is_online() is False
    assert ultralytics.__version__


def test_pipelines_never_import_node() -> None:
    offenders = []
    for path in PIPELINES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad = [n for n in names if n in ("node", "training") or n.startswith(("node.", "training."))]
            offenders += [f"{path.name}: {n}" for n in bad]
    assert not offenders, offenders
