"""Run configurations: the shipped ones parse and point at real data; typos are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import config_from_dict, load_config
from training.datasets import ADAPTERS
from training.errors import ConfigError
from training.run import parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
MODELS = Path(__file__).resolve().parents[2] / "models"


SHIPPED = {  # config -> the bundle it builds (or, for lungs_member*, the ensemble it is part of)
    "projection": "projection",
    "lungs_member1": "lungs",
    "lungs_member2": "lungs",
    "lungs_member3": "lungs",
    "lungs_member4": "lungs",
    "covid": "covid",
    "covid_input_lungs": "covid/input_lungs",
    "ggo_segmentation": "ggo_segmentation",
    "ggo_detection": "ggo_detection",
}


def test_one_config_per_shipped_model() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.toml")) == sorted(SHIPPED)
    assert not [p for p in CONFIGS.rglob("*") if p.is_dir()]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_parse_and_resolve(name: str, shared_data: Path) -> None:
    cfg = load_config(CONFIGS / f"{name}.toml", data_root=str(shared_data))
    bundle = MODELS / SHIPPED[name] / "configs" / "metadata.json"
    assert cfg.task == json.loads(bundle.read_text())["task"] and cfg.data.root == str(shared_data)
    for source in cfg.data.sources:
        assert source.adapter in ADAPTERS and (shared_data / source.path).is_dir()
    assert load_config(CONFIGS / f"{name}.toml").data.root == "../shared/data"


def test_overrides_and_errors(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "covid.toml", overrides=parse_overrides(["train.epochs=1", "input.size=64"]))
    assert cfg.train.epochs == 1 and cfg.input["size"] == 64 and cfg.input["mode"] == "lungs_only"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\] in \[train\]"):
        config_from_dict({"run": {"task": "covid", "name": "x"}, "train": {"epoch": 3}}, "x.toml")
    with pytest.raises(ConfigError, match="task 'ct'"):
        config_from_dict({"run": {"task": "ct", "name": "x"}})
    with pytest.raises(ConfigError, match="sampling 'random'"):
        config_from_dict({"run": {"task": "covid", "name": "x"}, "train": {"sampling": "random"}})
    with pytest.raises(ConfigError, match="min_patient_age_years"):
        config_from_dict({"run": {"task": "covid", "name": "x", "min_patient_age_years": -2}})
    assert load_config(CONFIGS / "covid.toml").min_patient_age_years == 18  # the shipped covid recipe
    (tmp_path / "bad.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_train_command_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli.main import main

    assert main(["train", str(tmp_path / "absent.toml")]) == 2
    assert "run configuration not found" in capsys.readouterr().err
    bad = tmp_path / "typo.toml"
    bad.write_text('[run]\ntask = "lungs"\nname = "x"\n[train]\nepoch = 1\n')
    assert main(["train", str(bad), "--set", "train.batch_size=2"]) == 2
    assert "unknown key(s) ['epoch'] in [train]" in capsys.readouterr().err
