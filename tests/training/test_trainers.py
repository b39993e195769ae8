"""Each trainer runs one tiny epoch on CPU and exports a bundle the pipeline loads and runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.manifest import file_sha256

TASKS = ("projection", "lungs", "covid", "ggo_segmentation", "ggo_detection")

# The tiny trainings of every task (the session fixture tiny_models) take ~35 s before the first test.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", TASKS)
def test_bundle_is_complete_and_loads(task: str, tiny_models: dict[str, Path]) -> None:
    from pipelines.bundle import load_bundle, read_metadata

    bundle = tiny_models[task]
    meta = read_metadata(bundle)
    assert meta.task == task and meta.name == f"tiny-{task}"
    run_dir = bundle.parent.parent
    assert meta.manifest_sha256 == file_sha256(run_dir / "manifest.csv")
    assert meta.training_data["config"]["task"] == task and meta.git_commit
    assert 0.0 <= meta.operating_threshold <= 1.0 and "validation" in meta.threshold_method
    assert set(meta.metrics) >= {"validation", "test", "best_epoch"}
    assert meta.training_data["splits"]["test"]["images"] > 0
    card = (bundle / "docs" / "README.md").read_text()
    assert "Research use only" in card and meta.manifest_sha256 in card
    loaded = load_bundle(bundle, task, device="cpu")
    assert loaded.metadata.weights["sha256"] == file_sha256(bundle / "models" / "model.pt")
    if task != "ggo_detection":
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        assert lines[0].startswith("epoch,train_loss,val_loss,val_metric") and len(lines) == 2
        assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_classifier_metrics_and_covid_shortcut_check(tiny_models: dict[str, Path]) -> None:
    from pipelines.bundle import read_metadata

    covid = read_metadata(tiny_models["covid"])
    assert covid.min_patient_age_years == 18.0  # [run] min_patient_age_years reaches the bundle
    assert read_metadata(tiny_models["projection"]).min_patient_age_years == 0.0
    test = covid.metrics["test"]
    assert {
        "auc",
        "auc_ci95",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "brier",
        "reliability",
        "per_source",
    } <= set(test)
    assert set(test["per_source"]) <= {"ieee8023", "openist"}
    assert covid.target_layer == "features.29" and covid.architecture == "vgg16"
    lungs_only = read_metadata(tiny_models["covid_lungs_only"])
    assert lungs_only.input.mode == "lungs_only" and lungs_only.architecture == "vgg19"
    check = lungs_only.metrics["test"]["shortcut_check"]
    assert check["auc_lungs_only"] is not None and check["auc_lungs_removed"] is None
    assert "Shortcut check" in (tiny_models["covid"] / "docs" / "README.md").read_text()
    seg = read_metadata(tiny_models["lungs"]).metrics["test"]
    assert {"dice_mean", "dice_ci95", "iou_mean", "n"} <= set(seg) and 0 <= seg["dice_mean"] <= 1
    det = read_metadata(tiny_models["ggo_detection"]).metrics["test"]
    assert {"map50", "map50_95", "n_truth_boxes"} <= set(det) and det["n_truth_boxes"] > 0


def test_pipeline_runs_the_trained_bundles(
    tiny_models_dir: Path, shared_data: Path, yolo_state: Path
) -> None:
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_image

    pipeline = ChestPipeline.from_models_dir(tiny_models_dir, device="cpu", state_dir=yolo_state)
    for path in (
        shared_data / "dicom_samples" / "txv_siim_ptx_CR_chest_PA.dcm",
        next((shared_data / "openist_normal_lungmask" / "images_512").iterdir()),
    ):
        image = load_image(path)
        result = pipeline.analyze(image)
        assert result.image_shape == image.shape
        assert result.projection.model.name == "tiny-projection"
        if result.analysed:
            assert result.lungs is not None and result.lungs.mask.shape == image.shape
            assert result.covid is not None and 0.0 <= result.covid.probability <= 1.0
            assert result.ggo is not None and result.ggo.mask.shape == image.shape
        json.dumps(result.to_json())


def test_each_task_module_runs_its_trained_bundle(
    tiny_models: dict[str, Path], shared_data: Path, yolo_state: Path
) -> None:
    """Independent of the tiny projection model's call, every trained bundle runs in its task."""
    from pipelines.bundle import load_bundle
    from pipelines.image import load_image
    from pipelines.tasks.covid import CovidClassifier
    from pipelines.tasks.ggo import GgoDetector, GgoSegmenter
    from pipelines.tasks.lungs import LungSegmenter

    image = load_image(shared_data / "dicom_samples" / "txv_siim_ptx_CR_chest_PA.dcm")
    lungs = LungSegmenter(load_bundle(tiny_models["lungs"], "lungs")).predict([image])[0]
    assert lungs.mask.shape == image.shape
    mask = lungs.mask if lungs.mask.any() else np.ones(image.shape, bool)
    for key in ("covid", "covid_lungs_only"):
        covid = CovidClassifier(load_bundle(tiny_models[key], "covid")).predict([image], [mask])[0]
        assert 0.0 <= covid.probability <= 1.0 and covid.heatmap.shape == image.shape
    boxes = GgoDetector(
        load_bundle(tiny_models["ggo_detection"], "ggo_detection", state_dir=yolo_state)
    ).predict([image])[0]
    assert all(0 <= b.x0 < b.x1 <= image.shape[1] for b in boxes)
    ggo_mask, prob = GgoSegmenter(load_bundle(tiny_models["ggo_segmentation"], "ggo_segmentation")).predict(
        [image], [mask]
    )[0]
    assert ggo_mask.shape == prob.shape == image.shape


def test_resume_continues_exactly(
    training_root: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs straight == two epochs with a crash in epoch 2 and ``--resume`` (same weights)."""
    from tiny_runs import tiny_config

    import training.validation as validation
    from training.config import config_from_dict
    from training.run import train_from_config

    def run(name: str, resume: bool = False) -> Path:
        cfg = tiny_config("projection", training_root / "resume", shared_data, train__epochs=2)
        cfg["run"]["name"] = name
        cfg["data"]["near_duplicates"] = False
        cfg["data"]["max_images"] = 4
        return train_from_config(config_from_dict(cfg), resume=resume, device="cpu")  # type: ignore[return-value]

    straight = run("straight")
    real_metric, calls = validation.validation_metric, []

    def crash_in_second_epoch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash after training epoch 2, before its checkpoint")
        return real_metric(*args, **kwargs)

    monkeypatch.setattr(validation, "validation_metric", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run("resumed")
    monkeypatch.setattr(validation, "validation_metric", real_metric)
    resumed = run("resumed", resume=True)
    a = torch.load(straight.parent.parent / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed.parent.parent / "checkpoints" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    rows = (resumed.parent.parent / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]


def test_a_leaky_manifest_fails_the_run(
    training_root: Path, tiny_models: dict[str, Path], shared_data: Path
) -> None:
    from tiny_runs import tiny_config

    from training.config import config_from_dict
    from training.errors import LeakageError
    from training.manifest import read_manifest, write_manifest
    from training.run import train_from_config

    rows = read_manifest(tiny_models["lungs"].parent.parent / "manifest.csv")
    train = next(r for r in rows if r.split == "train")
    test = next(r for r in rows if r.split == "test")
    test.patient_id = train.patient_id  # planted: one patient in train and test
    leaky = write_manifest(rows, training_root / "leaky.csv")
    cfg = tiny_config("lungs", training_root / "leaky", shared_data, data__manifest=str(leaky))
    with pytest.raises(LeakageError, match="patient_id"):
        train_from_config(config_from_dict(cfg), device="cpu")


def test_evaluate_command(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli.main import main

    for task in ("covid", "lungs", "ggo_detection"):
        bundle = tiny_models[task]
        out = tmp_path / f"{task}.json"
        rc = main(
            [
                "evaluate",
                str(bundle),
                "--manifest",
                str(bundle.parent.parent / "manifest.csv"),
                "--split",
                "test",
                "--out",
                str(out),
                "--n-bootstrap",
                "20",
            ]
        )
        assert rc == 0
        report = json.loads(out.read_text())
        assert report["task"] == task and report["split"] == "test" and report["n_images"] > 0
        key = {"covid": "auc", "lungs": "dice_mean", "ggo_detection": "map50"}[task]
        assert key in report["metrics"]
    printed = capsys.readouterr().out
    assert "tiny-covid" in printed and "dice_mean" in printed
    rc = main(["evaluate", str(tmp_path / "nope"), "--manifest", str(out), "--split", "test"])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_segmentation_threshold_and_masks_are_on_the_source_grid(tiny_models: dict[str, Path]) -> None:
    from pipelines.bundle import load_bundle
    from training.evaluate import segmentation_source_pairs
    from training.manifest import read_manifest

    bundle = load_bundle(tiny_models["lungs"], "lungs")
    rows = [
        r for r in read_manifest(tiny_models["lungs"].parent.parent / "manifest.csv") if r.split == "test"
    ][:2]
    pairs = segmentation_source_pairs(
        bundle.network, rows, bundle.metadata.input.to_dict(), "lungs", bundle.metadata.operating_threshold
    )
    for pred, truth in pairs:
        assert pred.shape == truth.shape and pred.dtype == np.bool_
    assert shutil.which("git")


def test_lungs_only_covid_bundle_carries_the_lung_model_it_was_trained_with(
    tiny_models: dict[str, Path],
) -> None:
    from pipelines.bundle import input_lungs_dir, load_bundle, read_metadata

    bundle = tiny_models["covid_lungs_only"]
    nested = input_lungs_dir(bundle)
    assert nested is not None
    assert read_metadata(nested).weights["sha256"] == read_metadata(tiny_models["lungs"]).weights["sha256"]
    assert load_bundle(bundle, "covid").input_lungs is not None
    assert input_lungs_dir(tiny_models["covid"]) is None  # whole-image input needs no lung model
