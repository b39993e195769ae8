"""training.recipes.ggo_decision: the choice, its figures and the metadata it writes, on constructed records
(the real run is in the GGO card; the shipped rule is tested on real images in
tests/pipelines/test_ggo_shipped_decision.py; the shared statistics in test_ggo_measure.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.bundle import load_bundle, read_metadata
from pipelines.tasks.ggo_decision import GgoDecisionRule
from pipelines.testing import write_random_bundles
from training.recipes.ggo_decision import MASK_THRESHOLDS, choose, figures, write_rule


def _record(kind: str, dataset: str, split: str, box: float, prob: float, extent: float = 10.0) -> dict:
    rec = {"path": f"{dataset}-{split}-{box}-{prob}", "kind": kind, "dataset": dataset, "split": split,
           "seen_split": "", "boxes_at_operating": int(box >= 0.25),
           "features": {"max_box_confidence": box, "lung_probability_mean": prob,
                        "lung_probability_p90": prob, "lung_share_above_half": prob},
           "extent": {str(t): extent * (1.0 - t) for t in MASK_THRESHOLDS}}
    if kind == "ggo":
        rec.update(true_extent=extent * 0.4, dice={str(t): 0.5 for t in MASK_THRESHOLDS},
                   dice_unrestricted_bundle=0.4)
    return rec


def test_choose_refuses_reversed_evidence_and_sets_the_point_on_validation() -> None:
    rng = np.random.default_rng(1)
    recs = []
    for split, n in (("train", 60), ("validation", 30), ("test", 30)):
        for _ in range(n):
            # GGO images: higher box confidence, LOWER segmentation probability (as measured on the real data)
            recs.append(_record("ggo", "gb", split, rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.5)))
            recs.append(_record("normal_adult", "nih", split, rng.uniform(0.0, 0.5), rng.uniform(0.5, 0.7)))
            recs.append(_record("normal_adult", "openist", split, rng.uniform(0.0, 0.4),
                                rng.uniform(0.5, 0.7)))
    rule, summary = choose(recs, "ab" * 32)
    refused = [c for c in summary["candidates"] if "refused" in c]
    assert refused
    assert all({"lung_probability_mean", "lung_probability_p90"} & set(c["features"]) for c in refused)
    assert all(c >= 0 for c in rule.coefficients)
    val = figures(recs, rule, "validation")
    assert val["normal_adult/nih"]["share_reported"] <= 0.10
    assert val["normal_adult/openist"]["share_reported"] <= 0.10
    assert val["ggo/gb"]["sensitivity"] > 0.5
    assert rule.mask_threshold == 0.6  # extent x (1 - t) meets the true extent (0.4 x extent) at 0.6
    assert figures(recs, rule, "test")["ggo/gb"]["n"] == 30


def test_write_rule_keeps_the_weights(tmp_path: Path) -> None:
    write_random_bundles(tmp_path, seed=0, state_dir=tmp_path / "state")
    bundle = tmp_path / "random-ggo-segmentation"
    before = read_metadata(bundle).weights
    rule = GgoDecisionRule(features=("max_box_confidence",), mean=(0.2,), scale=(0.1,), coefficients=(1.0,),
                           intercept=0.0, threshold=0.3, mask_threshold=0.7, box_floor=0.01,
                           detector_sha256="ab" * 32, measured="test")
    metadata_path = bundle / "configs" / "metadata.json"
    write_rule(bundle, rule)
    assert json.loads(metadata_path.read_text())["ggo_decision"] == rule.to_metadata()
    loaded = load_bundle(bundle, "ggo_segmentation")  # sha256 of the weights still matches
    assert loaded.metadata.weights == before
    assert GgoDecisionRule.from_metadata(loaded.metadata.ggo_decision) == rule
