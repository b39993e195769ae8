"""Bundle format: save/load round trip, sha256 and task refusal, no code in JSON, registry choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.bundle import (
    BundleMetadata,
    BundleRegistry,
    load_bundle,
    read_metadata,
    save_bundle,
)
from pipelines.errors import BundleError
from pipelines.preprocess import InputSpec

TINY_UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def _tiny_lungs_bundle(
    folder: Path, name: str = "lungs-a", version: str = "1.0.0", dtype: str = "float32"
) -> Path:
    from pipelines import networks

    net = networks.build_network("unet", **TINY_UNET)
    metadata = BundleMetadata(
        name=name, version=version, task="lungs", architecture="unet",
        network_def=networks.network_def("unet", **TINY_UNET), input=InputSpec(size=32),
        labels=["background", "lung"], operating_threshold=0.5,
    )
    return save_bundle(folder / name, metadata, net.state_dict(), f"# {name}\n", dtype=dtype)


def test_round_trip_keeps_weights_and_standard_keys(tmp_path: Path) -> None:
    import torch

    bundle = _tiny_lungs_bundle(tmp_path)
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (bundle / rel).is_file(), rel
    data = json.loads((bundle / "configs/metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task", "network_data_format",
                "name", "architecture", "network_def", "input", "labels", "operating_threshold", "weights",
                "metrics", "training_data", "git_commit", "manifest_sha256"):
        assert key in data, key
    loaded = load_bundle(bundle, "lungs")
    saved = torch.load(bundle / "models/model.pt", weights_only=True)
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert loaded.info.name == "lungs-a" and loaded.info.version == "1.0.0"
    assert loaded.metadata.input == InputSpec(size=32)
    assert not loaded.network.training


def test_changed_weights_are_refused(tmp_path: Path) -> None:
    bundle = _tiny_lungs_bundle(tmp_path)
    weights = bundle / "models/model.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        load_bundle(bundle, "lungs")


def test_wrong_task_is_refused(tmp_path: Path) -> None:
    bundle = _tiny_lungs_bundle(tmp_path)
    with pytest.raises(BundleError, match="is a 'lungs' model, refused for task 'covid'"):
        load_bundle(bundle, "covid")
    with pytest.raises(BundleError, match="unknown task"):
        load_bundle(bundle, "fracture")


@pytest.mark.parametrize(
    "network_def, message",
    [
        ({"_target_": "os.system", "command": "true"}, "is not under"),
        ({"_target_": "pipelines.networks.unet", "channels": "$[4, 8]"}, "expressions or references"),
        ({"_target_": "pipelines.networks.unet", "channels": "@other"}, "expressions or references"),
    ],
)
def test_code_in_network_def_is_refused(tmp_path: Path, network_def: dict, message: str) -> None:
    bundle = _tiny_lungs_bundle(tmp_path)
    meta_path = bundle / "configs/metadata.json"
    data = json.loads(meta_path.read_text())
    data["network_def"] = network_def
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle, "lungs")


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path: Path) -> None:
    bundle = _tiny_lungs_bundle(tmp_path)
    meta_path = bundle / "configs/metadata.json"
    data = json.loads(meta_path.read_text())
    data["network_def"]["channels"] = [8, 16]
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="weights do not load into unet"):
        load_bundle(bundle, "lungs")


def test_missing_and_invalid_metadata(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        read_metadata(tmp_path)
    bundle = _tiny_lungs_bundle(tmp_path)
    meta_path = bundle / "configs/metadata.json"
    data = json.loads(meta_path.read_text())
    del data["labels"]
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"missing keys \['labels'\]"):
        read_metadata(bundle)
    meta_path.write_text("{not json")
    with pytest.raises(BundleError, match="unreadable metadata"):
        read_metadata(bundle)


def test_registry_chooses_highest_version_or_preferred_and_lists_problems(tmp_path: Path) -> None:
    _tiny_lungs_bundle(tmp_path, "lungs-old", "1.9.0")
    _tiny_lungs_bundle(tmp_path, "lungs-new", "1.10.0")
    broken = tmp_path / "broken" / "configs"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("[]")
    registry = BundleRegistry(tmp_path)
    assert registry.available_tasks() == ["lungs"]
    assert registry.choose("lungs")[1].name == "lungs-new"  # 1.10 > 1.9: versions compare as numbers
    assert BundleRegistry(tmp_path, preferred={"lungs": "lungs-old"}).choose("lungs")[1].name == "lungs-old"
    assert tmp_path / "broken" in registry.problems
    with pytest.raises(BundleError, match="no 'covid' bundle"):
        registry.choose("covid")
    with pytest.raises(BundleError, match="models folder not found"):
        BundleRegistry(tmp_path / "nowhere")


def test_detection_bundle_needs_a_checkpoint_file(tmp_path: Path) -> None:
    metadata = BundleMetadata(
        name="det", version="1", task="ggo_detection", architecture="yolo",
        network_def={"_target_": "pipelines.networks.yolo_model"}, input=InputSpec(size=64),
        labels=["ggo"],
    )
    with pytest.raises(BundleError, match="needs an ultralytics checkpoint path"):
        save_bundle(tmp_path / "det", metadata, {}, "# det")
    with pytest.raises(BundleError, match="checkpoint not found"):
        save_bundle(tmp_path / "det", metadata, tmp_path / "missing.pt", "# det")


def test_half_precision_weights_load_as_float32(tmp_path: Path) -> None:
    import torch

    bundle = _tiny_lungs_bundle(tmp_path, dtype="float16")
    assert json.loads((bundle / "configs/metadata.json").read_text())["weights"]["dtype"] == "float16"
    saved = torch.load(bundle / "models/model.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved.values() if torch.is_floating_point(v))
    loaded = load_bundle(bundle, "lungs")
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
