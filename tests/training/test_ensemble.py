"""training.recipes.ensemble: seeded runs (covid, lungs) averaged into one bundle the pipeline runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _member(
    tmp: Path, manifest: Path, seed: int, out: Path, shared_data: Path, task: str = "covid", **extra: object
) -> Path:
    from tiny_runs import tiny_config, to_toml

    cfg = tiny_config(task, out, shared_data, data__manifest=str(manifest), data__max_images=0,
                      data__sources=[], **extra)
    cfg["run"]["name"] = f"tiny-{task}-member-{seed}"
    cfg["run"]["seed"] = seed
    path = tmp / f"member{seed}.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    return path


def test_ensemble_of_trained_members_exports_a_bundle_the_pipeline_runs(
    tiny_models: dict[str, Path], shared_data: Path, training_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    from pipelines.bundle import load_bundle, read_metadata
    from pipelines.image import load_image
    from pipelines.networks import MeanEnsemble
    from pipelines.preprocess import prepare_input
    from pipelines.runtime import positive_probability
    from pipelines.tasks.covid import CovidClassifier
    from training.recipes.ensemble import main

    manifest = tiny_models["covid"].parent.parent / "manifest.csv"  # one tiny split for every member
    out = training_root / "ensemble_runs"
    configs = [_member(tmp_path, manifest, seed, out, shared_data) for seed in (11, 12)]
    rc = main([*map(str, configs), "--name", "tiny-covid-ensemble", "--version", "0.0.2", "--train",
               "--min-members", "2"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    bundle = Path(printed["bundle"])
    meta = read_metadata(bundle)
    assert meta.name == "tiny-covid-ensemble" and meta.task == "covid"
    assert meta.network_def["_target_"] == "pipelines.networks.mean_ensemble"
    assert len(meta.network_def["members"]) == 2
    assert 0.0 <= meta.operating_threshold <= 1.0 and "validation" in meta.threshold_method
    assert meta.metrics["test"]["auc"] is None or 0.0 <= meta.metrics["test"]["auc"] <= 1.0
    raw = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [m["seed"] for m in raw["ensemble"]["members"]] == [11, 12]
    assert "Research use only" in (bundle / "docs" / "README.md").read_text()

    loaded = load_bundle(bundle, "covid")
    assert isinstance(loaded.network, MeanEnsemble)
    members = [load_bundle(out / f"tiny-covid-member-{s}" / "bundles" / f"tiny-covid-member-{s}", "covid")
               for s in (11, 12)]
    image = load_image(shared_data / "dicom_samples" / "txv_siim_ptx_CR_chest_PA.dcm")
    result = CovidClassifier(loaded).predict([image], [None])[0]
    x = torch.from_numpy(prepare_input(image.pixels, meta.input).array[None])
    with torch.inference_mode():
        member_p = [float(positive_probability(m.network(x))[0]) for m in members]
    assert result.probability == pytest.approx(float(np.mean(member_p)), abs=1e-5)
    assert result.heatmap.shape == image.shape


def test_members_that_differ_beyond_the_seed_are_refused(
    tiny_models: dict[str, Path], shared_data: Path, training_root: Path, tmp_path: Path
) -> None:
    from training.config import load_config
    from training.errors import TrainingError
    from training.recipes.ensemble import check_members

    manifest = tiny_models["covid"].parent.parent / "manifest.csv"
    out = training_root / "ensemble_refused"
    a = load_config(_member(tmp_path, manifest, 21, out, shared_data))
    b = load_config(_member(tmp_path, manifest, 22, out, shared_data, input__size=96))
    with pytest.raises(TrainingError, match=r"\[input\] differs"):
        check_members([a, b])
    c = load_config(_member(tmp_path, manifest, 21, out, shared_data))
    with pytest.raises(TrainingError, match="distinct seeds"):
        check_members([a, c])


def test_a_shipped_lungs_bundle_and_a_new_seed_average_per_pixel(
    tiny_models: dict[str, Path], shared_data: Path, training_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A segmentation ensemble: one member is an existing bundle (--member-bundle), one is trained."""
    import torch

    from pipelines.bundle import load_bundle, read_metadata
    from pipelines.networks import MeanEnsemble
    from pipelines.runtime import foreground_probability
    from training.recipes.ensemble import main

    shipped = tiny_models["lungs"]
    manifest = shipped.parent.parent / "manifest.csv"
    out = training_root / "ensemble_lungs"
    seed = read_metadata(shipped).training_data["config"]["seed"]
    old, new = (_member(tmp_path, manifest, s, out, shared_data, task="lungs") for s in (seed, seed + 1))
    rc = main([str(old), str(new), "--name", "tiny-lungs-ensemble", "--version", "0.0.3", "--train",
               "--min-members", "2", "--member-bundle", f"{old}={shipped}"])
    assert rc == 0
    bundle = Path(json.loads(capsys.readouterr().out)["bundle"])
    assert not (out / f"tiny-lungs-member-{seed}").exists(), "the given bundle must be used, not retrained"
    meta = read_metadata(bundle)
    assert meta.task == "lungs" and 0.0 <= meta.metrics["validation"]["dice_mean"] <= 1.0
    raw = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "per-pixel" in raw["ensemble"]["combination"]
    assert raw["ensemble"]["members"][0]["weights_sha256"] == read_metadata(shipped).weights["sha256"]

    loaded = load_bundle(bundle, "lungs")
    assert isinstance(loaded.network, MeanEnsemble)
    trained = f"tiny-lungs-member-{seed + 1}"
    members = [load_bundle(shipped, "lungs"), load_bundle(out / trained / "bundles" / trained, "lungs")]
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        expected = sum(foreground_probability(m.network(x)) for m in members) / 2
        assert torch.allclose(foreground_probability(loaded.network(x)), expected, atol=1e-5)
