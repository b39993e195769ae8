"""The image-level GGO decision (specific first): the rule, its metadata, and what the pipeline, the SEG,
the SR and the --json record say when it calls GGO absent or present (tiny random bundles, real image)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipelines.errors import BundleError
from pipelines.results import Box
from pipelines.tasks.ggo_decision import GgoDecisionFeatures, GgoDecisionRule, decision_features

RULE = {"features": ["max_box_confidence", "lung_probability_mean"], "mean": [0.2, 0.5], "scale": [0.1, 0.05],
        "coefficients": [1.0, 0.5], "intercept": -1.0, "threshold": 0.5, "mask_threshold": 0.6,
        "box_floor": 0.01, "detector_sha256": "ab" * 32, "measured": "constructed for a test"}


def test_rule_reads_back_and_scores_monotonically() -> None:
    rule = GgoDecisionRule.from_metadata(RULE)
    assert rule is not None and rule.to_metadata() == RULE
    assert GgoDecisionRule.from_metadata({}) is None
    low = GgoDecisionFeatures(0.1, 0.5, 0.8, 0.3)
    high = GgoDecisionFeatures(0.6, 0.5, 0.8, 0.3)
    # sigmoid(-1 + 1 * (0.1 - 0.2) / 0.1) = sigmoid(-2)
    assert rule.score(low) == pytest.approx(1 / (1 + np.exp(2.0)))
    assert rule.score(high) > rule.score(low)
    assert not rule.present(rule.score(low)) and rule.present(rule.score(high))


@pytest.mark.parametrize("change, message", [
    ({"features": ["colour"], "mean": [0], "scale": [1], "coefficients": [1]}, "unknown feature"),
    ({"scale": [0.1, 0.0]}, "must be > 0"),
    ({"threshold": 1.5}, "not in"),
    ({"coefficients": [1.0]}, "one value each"),
    ({"detector_sha256": ""}, "detector_sha256"),
    ({"extra": 1}, "unknown keys"),
])
def test_bad_rules_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GgoDecisionRule.from_metadata({**RULE, **change})


def test_features_read_the_lungs_only() -> None:
    prob = np.zeros((10, 10), np.float32)
    prob[:, :5] = 0.9  # GGO-like probability left, none right
    lungs = np.zeros((10, 10), bool)
    lungs[:, 5:] = True  # ... but the lungs are on the right
    boxes = [Box(0, 0, 4, 4, 0.3), Box(1, 1, 5, 5, 0.7)]
    f = decision_features(boxes, prob, lungs)
    assert f.max_box_confidence == pytest.approx(0.7)
    assert f.lung_probability_mean == 0.0 and f.lung_share_above_half == 0.0
    lungs[:, 3:] = True
    f = decision_features([], prob, lungs)
    assert f.max_box_confidence == 0.0
    assert f.lung_share_above_half == pytest.approx(2 / 7)
    assert decision_features([], prob, np.zeros_like(lungs)).lung_probability_mean == 0.0


def test_metadata_checks_the_rule_and_its_bundle(random_models: Path) -> None:
    from pipelines.bundle import BundleMetadata, read_metadata

    seg = read_metadata(random_models / "random-ggo-segmentation").to_json()
    assert BundleMetadata.from_json({**seg, "ggo_decision": RULE}).ggo_decision == RULE
    with pytest.raises(BundleError, match="not in"):
        BundleMetadata.from_json({**seg, "ggo_decision": {**RULE, "mask_threshold": 2}})
    lungs = read_metadata(random_models / "random-lungs").to_json()
    with pytest.raises(BundleError, match="ggo_decision is for ggo_segmentation bundles"):
        BundleMetadata.from_json({**lungs, "ggo_decision": RULE})


def _models_with_rule(random_models: Path, tmp_path: Path, **change: object) -> Path:
    """A copy of the random bundles whose GGO segmentation carries a rule fitted with their detector."""
    from pipelines.bundle import read_metadata

    models = tmp_path / "models"
    shutil.copytree(random_models, models)
    detector_sha = read_metadata(models / "random-ggo-detection").weights["sha256"]
    path = models / "random-ggo-segmentation" / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["ggo_decision"] = {**RULE, "features": ["max_box_confidence"], "mean": [0.0], "scale": [1.0],
                                "coefficients": [1.0], "intercept": 0.0, "detector_sha256": detector_sha,
                                **change}
    path.write_text(json.dumps(metadata))
    return models


def _dciodvfy_errors(ds: pydicom.Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not installed (dicom3tools, see .ci/run)")
    out = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def test_absent_reports_no_ggo_anywhere(random_models: Path, state_dir: Path, tmp_path: Path,
                                        chest_dicom: Path) -> None:
    """Score below the threshold (1.0 cannot be reached by a sigmoid of a finite score): no box, mask, extent
    or GGO segment; the SR says "GGO not detected" with the score; --json says ggo_detected false."""
    import highdicom as hd

    from node.results import build_result_objects
    from node.results.sr import TRACKING_GGO_DECISION
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_dicom

    models = _models_with_rule(random_models, tmp_path, threshold=1.0)
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=state_dir)
    source = pydicom.dcmread(chest_dicom)
    result = pipeline.analyze(load_dicom(source))
    ggo = result.ggo
    assert result.analysed and ggo is not None and ggo.decision is not None
    assert not ggo.detected and not ggo.decision.present and ggo.decision.score < 1.0
    assert ggo.boxes == [] and not ggo.mask.any() and ggo.probability_map is None
    assert ggo.extent_percent is None
    record = json.loads(json.dumps(result.to_json()))
    assert record["ggo_detected"] is False and record["ggo_boxes"] == []
    assert record["ggo_extent_percent"] is None
    assert record["ggo_decision"]["score"] == pytest.approx(ggo.decision.score, abs=1e-6)
    assert not any("GGO" in w or "ggo" in w for w in result.warnings)

    seg, sr = build_result_objects(source, result)[:2]
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1]  # the lungs only
    assert not _dciodvfy_errors(seg, tmp_path / "seg.dcm")
    assert not _dciodvfy_errors(sr, tmp_path / "sr.dcm")
    report = hd.sr.srread(tmp_path / "sr.dcm")
    groups = report.content.get_image_measurement_groups()
    (decision,) = [g for g in groups if g.tracking_identifier == TRACKING_GGO_DECISION]
    (evaluation,) = decision.get_qualitative_evaluations()
    assert evaluation.value.meaning == "Absent"
    assert decision.get_measurements()[0].value == pytest.approx(ggo.decision.score, abs=1e-6)
    assert not [g for g in groups if g.tracking_identifier in ("GGO extent",)]
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any(t.startswith("GGO not detected") and f"{ggo.decision.score:.3f}" in t for t in texts), texts


def test_present_reports_the_mask_inside_the_lungs(random_models: Path, state_dir: Path, tmp_path: Path,
                                                   chest_dicom: Path) -> None:
    from node.results import build_result_objects
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_dicom

    models = _models_with_rule(random_models, tmp_path, threshold=0.0, mask_threshold=0.3)
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=state_dir)
    source = pydicom.dcmread(chest_dicom)
    result = pipeline.analyze(load_dicom(source))
    ggo, lungs = result.ggo, result.lungs
    assert ggo is not None and lungs is not None and ggo.detected and ggo.decision.present
    assert not (ggo.mask & ~lungs.mask).any()  # restricted to the lungs
    assert ggo.extent_percent == pytest.approx(100.0 * ggo.mask.sum() / lungs.area_px)
    assert all(b.confidence >= pipeline.ggo_detection.threshold for b in ggo.boxes)
    assert result.to_json()["ggo_detected"] is True
    seg = build_result_objects(source, result)[0]
    assert len(seg.SegmentSequence) == 2


def test_rule_fitted_with_another_detector_is_refused(random_models: Path, state_dir: Path,
                                                      tmp_path: Path) -> None:
    from pipelines.chest import ChestPipeline

    models = _models_with_rule(random_models, tmp_path, detector_sha256="cd" * 32)
    with pytest.raises(BundleError, match="fitted with the GGO detector"):
        ChestPipeline.from_models_dir(models, device="cpu", state_dir=state_dir)


def test_without_a_rule_ggo_is_reported_unchecked_with_a_warning(pipeline, chest_dicom: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.image import load_image

    result = pipeline.analyze(load_image(chest_dicom))
    assert result.ggo is not None and result.ggo.decision is None and result.ggo.detected
    assert any("no image-level GGO decision" in w for w in result.warnings)
    assert result.to_json()["ggo_decision"] is None
