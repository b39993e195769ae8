"""training.ensemble (and its recipe): seeded runs averaged into one bundle the pipeline runs."""

from __future__ import annotations

import json
import shutil
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


def _lungs_member(
    tiny_models: dict[str, Path], tmp: Path, seed: int, out: Path, shared_data: Path, **extra: object
) -> Path:
    """A tiny lungs member config on the tiny lungs run's split."""
    manifest = tiny_models["lungs"].parent.parent / "manifest.csv"
    return _member(tmp, manifest, seed, out, shared_data, task="lungs", **extra)


@pytest.mark.slow  # needs the tiny trainings (tiny_models: ~35 s)
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


@pytest.mark.slow  # needs the tiny trainings (tiny_models: ~35 s)
def test_members_that_differ_beyond_the_seed_are_refused(
    tiny_models: dict[str, Path], shared_data: Path, training_root: Path, tmp_path: Path
) -> None:
    from training.config import load_config
    from training.ensemble import check_members
    from training.errors import TrainingError

    manifest = tiny_models["covid"].parent.parent / "manifest.csv"
    out = training_root / "ensemble_refused"
    a = load_config(_member(tmp_path, manifest, 21, out, shared_data))
    b = load_config(_member(tmp_path, manifest, 22, out, shared_data, input__size=96))
    with pytest.raises(TrainingError, match=r"\[input\] differs"):
        check_members([a, b])
    c = load_config(_member(tmp_path, manifest, 21, out, shared_data))
    with pytest.raises(TrainingError, match="distinct seeds"):
        check_members([a, c])


@pytest.mark.slow  # needs the tiny trainings (tiny_models: ~35 s)
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


@pytest.mark.slow  # needs the tiny trainings (tiny_models: ~35 s)
def test_a_mean_ensemble_bundle_supplies_several_members_and_grows_by_one_seed(
    tiny_models: dict[str, Path], shared_data: Path, training_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--member-bundle A,B=ENSEMBLE``: a shipped two-member ensemble plus a third seed, no retraining."""
    import torch

    from pipelines.bundle import load_bundle
    from pipelines.networks import MeanEnsemble
    from pipelines.runtime import foreground_probability
    from training.recipes.ensemble import main

    out = training_root / "ensemble_grow"
    a, b, c = (_lungs_member(tiny_models, tmp_path, s, out, shared_data) for s in (41, 42, 43))
    rc = main([str(a), str(b), "--name", "tiny-two", "--version", "0.0.4", "--train", "--min-members", "2"])
    assert rc == 0
    two = Path(json.loads(capsys.readouterr().out)["bundle"])
    for s in (41, 42):  # the two-member bundle must be the only source of members 41 and 42 below
        shutil.rmtree(out / f"tiny-lungs-member-{s}" / "bundles")
    rc = main([str(a), str(b), str(c), "--name", "tiny-three", "--version", "0.0.5", "--train",
               "--member-bundle", f"{a},{b}={two}"])
    assert rc == 0
    three = Path(json.loads(capsys.readouterr().out)["bundle"])
    assert not (out / "tiny-lungs-member-41" / "bundles").exists()
    raw = json.loads((three / "configs" / "metadata.json").read_text())
    assert [m.get("member_of_ensemble_bundle") for m in raw["ensemble"]["members"]] == [0, 1, None]
    assert [m["seed"] for m in raw["ensemble"]["members"]] == [41, 42, 43]
    net, old = load_bundle(three, "lungs").network, load_bundle(two, "lungs").network
    assert isinstance(net, MeanEnsemble) and len(net.members) == 3
    new = load_bundle(out / "tiny-lungs-member-43" / "bundles" / "tiny-lungs-member-43", "lungs").network
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        parts = [foreground_probability(m(x)) for m in (*old.members, new)]
        assert torch.allclose(foreground_probability(net(x)), sum(parts) / 3, atol=1e-5)


@pytest.mark.slow  # needs the tiny trainings (tiny_models: ~35 s)
def test_mixed_recipes_are_allowed_only_on_the_same_validation_and_test_images(
    tiny_models: dict[str, Path], shared_data: Path, training_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.config import load_config
    from training.ensemble import check_members
    from training.errors import TrainingError
    from training.manifest import read_manifest, write_manifest
    from training.recipes.ensemble import main

    out = training_root / "ensemble_mixed"
    a = _lungs_member(tiny_models, tmp_path, 51, out, shared_data)
    b = _lungs_member(tiny_models, tmp_path, 52, out, shared_data, train__lr=5e-4)
    manifest = tiny_models["lungs"].parent.parent / "manifest.csv"
    with pytest.raises(TrainingError, match=r"\[train\] differs"):
        check_members([load_config(a), load_config(b)])
    check_members([load_config(a), load_config(b)], mixed_recipes=True)
    (tmp_path / "other").mkdir()  # the same seed as a, another recipe (only checked, never trained)
    same_seed = _lungs_member(tiny_models, tmp_path / "other", 51, out, shared_data, train__lr=2e-4)
    check_members([load_config(a), load_config(same_seed)], mixed_recipes=True)
    with pytest.raises(TrainingError, match="distinct seeds"):
        check_members([load_config(a), load_config(a)], mixed_recipes=True)
    args = ["--version", "0.0.6", "--train", "--min-members", "2", "--mixed-recipes"]
    assert main([str(a), str(b), "--name", "tiny-mixed", *args]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == ["tiny-lungs-member-51", "tiny-lungs-member-52"]

    rows = read_manifest(manifest)
    moved = next(r for r in rows if r.split == "validation")
    moved.split = "train"  # one validation image fewer: the ensemble could not be judged as its members
    other = write_manifest(rows, tmp_path / "other.csv")
    c = _member(tmp_path, other, 53, out, shared_data, task="lungs")
    with pytest.raises(TrainingError, match="validation/test images differ"):
        main([str(a), str(c), "--name", "tiny-mixed-bad", *args])


    # --mixed-splits: a member trained on another split joins, its validation overlap recorded ...
    assert main([str(a), str(c), "--name", "tiny-mixed-splits", *args, "--mixed-splits"]) == 0
    bundle = Path(json.loads(capsys.readouterr().out)["bundle"])
    members = json.loads((bundle / "configs" / "metadata.json").read_text())["ensemble"]["members"]
    assert [m.get("trained_on_validation_images") for m in members] == [0, 1]
    # ... but a member that trained on one of the ensemble's test images is refused
    rows = read_manifest(manifest)
    next(r for r in rows if r.split == "test").split = "train"
    d = _member(tmp_path, write_manifest(rows, tmp_path / "leaky.csv"), 54, out, shared_data, task="lungs")
    with pytest.raises(TrainingError, match="trained on 1 of .* test images"):
        main([str(a), str(d), "--name", "tiny-mixed-leaky", *args, "--mixed-splits"])
    with pytest.raises(SystemExit):
        main([str(a), str(c), "--name", "x", "--version", "0", "--mixed-splits"])  # needs --mixed-recipes


def test_member_bundle_arguments_name_a_bundle_or_the_members_of_an_ensemble_bundle(tmp_path: Path) -> None:
    from training.ensemble import MemberSource, parse_member_bundles

    a, b, c = (str(tmp_path / f"{n}.toml") for n in "abc")
    sources = parse_member_bundles([f"{a},{b}=models/lungs", f"{c}=runs/x"])
    assert sources == {a: MemberSource(Path("models/lungs"), 0), b: MemberSource(Path("models/lungs"), 1),
                       c: MemberSource(Path("runs/x"), None)}
    for bad in (a, f"{a}=", f"={a}"):
        with pytest.raises(ValueError, match="expected CONFIG=DIR"):
            parse_member_bundles([bad])
