"""training.recipes.ggo_head, the check a GGO head must pass before it may decide "GGO present": the labels,
the lungs-only / lungs-removed inputs, the lung-restricted features, and the gate that refuses a head reading
the collection instead of the lungs (constructed records; the real run is in the GGO card)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.results import Box
from training.recipes.ggo_head import (
    FOLDS,
    assess,
    box_features,
    fold_of,
    kind,
    map_features,
    view_pixels,
)


def _rec(dataset: str, **extra: object) -> dict:
    return {"dataset": dataset, "covid": "", "findings": [], **extra}


def test_labels() -> None:
    assert kind(_rec("generalblockchain", has_truth=True)) == "ggo"
    assert kind(_rec("kermany_pediatric")) == "child"
    assert kind(_rec("nih_cxr14")) == "normal_adult"
    assert kind(_rec("ieee8023", findings=["No Finding"])) == "normal_adult"
    assert kind(_rec("ieee8023", findings=["COVID-19"], covid="1", brixia_global=6.0)) == "brixia_high"
    assert kind(_rec("ieee8023", findings=["COVID-19"], covid="1", brixia_global=1.0)) == "brixia_low"
    assert kind(_rec("ieee8023", findings=["COVID-19"], covid="1", brixia_global=3.5)) == "brixia_mid"
    assert kind(_rec("ieee8023", findings=["COVID-19"], covid="1")) == "covid"
    assert kind(_rec("ieee8023", findings=[])) == "other"  # unlabelled pictures are not normals


def test_views_keep_or_remove_the_lungs() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((40, 40)).astype(np.float32)
    lung = np.zeros((40, 40), bool)
    lung[10:30, 5:35] = True
    only, removed = view_pixels(pixels, lung, "lungs_only"), view_pixels(pixels, lung, "lungs_removed")
    assert np.array_equal(only[lung], pixels[lung]) and np.allclose(only[~lung], pixels[lung].mean())
    assert np.array_equal(removed[~lung], pixels[~lung]) and np.allclose(removed[lung], pixels[lung].mean())
    assert view_pixels(pixels, lung, "image") is pixels


def test_features_read_inside_the_lungs_only() -> None:
    rng = np.random.default_rng(1)
    prob = rng.random((40, 40)).astype(np.float32)
    lung = np.zeros((40, 40), bool)
    lung[10:30, 5:35] = True
    changed = np.where(lung, prob, 1.0 - prob)
    assert map_features(prob, lung) == map_features(changed, lung)
    boxes = [Box(0, 0, 40, 20, 0.6), Box(0, 0, 2, 2, 0.05)]
    top1, top2, _, total, n_over, cover_05, cover_10, cover_25 = box_features(boxes, lung)
    assert (top1, top2, n_over) == (0.6, 0.05, 1) and total == pytest.approx(0.65)
    assert cover_05 == cover_10 == cover_25 == pytest.approx(0.5)  # the box covers the upper half of the lung


def test_folds_keep_a_patient_together() -> None:
    assert {fold_of("ieee8023_57") for _ in range(3)} == {fold_of("ieee8023_57")}
    assert {fold_of(f"p{i}") for i in range(200)} == set(range(FOLDS))


def _records(signal: str, seed: int = 0) -> list[dict]:
    """ieee8023 GGO-like pictures and normals, NIH/OpenIST normals, children; one feature carries the
    collection ("collection") or the disease ("disease"), the others noise."""
    rng = np.random.default_rng(seed)
    recs = []
    spec = [("ieee8023", "brixia_high", 120), ("ieee8023", "normal_adult", 40),
            ("ieee8023", "brixia_low", 40),
            ("nih_cxr14", "normal_adult", 120), ("openist", "normal_adult", 120),
            ("kermany_pediatric", "child", 40), ("generalblockchain", "ggo", 40)]
    for dataset, k, n in spec:
        for i in range(n):
            positive = k in ("brixia_high", "ggo")
            ieee = dataset in ("ieee8023", "generalblockchain")
            mean = float(positive if signal == "disease" else ieee)
            split = ("train", "validation", "test")[i % 3]
            v = [float(rng.normal(mean * 3.0, 1.0))] + rng.normal(0.0, 1.0, 3).tolist()
            recs.append({"path": f"{dataset}/{k}/{i}", "patient_id": f"{dataset}_{k}_{i}", "dataset": dataset,
                         "kind": k, "split": split, "seen_split": "",
                         "image": {"unet_l3": v, "unet_l4": v[:1], "prob": v[1:]},
                         "lungs_only": {"unet_l3": v, "unet_l4": v[:1], "prob": v[1:]},
                         "lungs_removed": {"unet_l3": v, "unet_l4": v[:1], "prob": v[1:]},
                         "box": v[2:], "intensity": v[3:]})
    return recs


def test_gate_refuses_a_head_that_reads_the_collection() -> None:
    entry = assess(_records("collection"), "unet_encoder")
    assert entry["oof_ieee8023_positive_vs_nih_openist_normal_auc"] > 0.95
    assert 0.35 < entry["oof_within_ieee8023_auc"] < 0.65
    assert not entry["passes_gate"]
    # Blind to the ieee8023 normals, the same head would report most of them (the trap the gate refuses).
    reported, n = map(int, entry["if_blind_to_ieee8023_normals"]["oof_ieee8023_normals_reported"].split("/"))
    assert reported > 0.5 * n


def test_gate_passes_a_head_that_reads_the_disease() -> None:
    entry = assess(_records("disease"), "unet_encoder")
    assert entry["oof_within_ieee8023_auc"] > 0.95
    assert entry["passes_gate"]
    test = entry["test"]["image"]["operating"]
    assert test["ggo/generalblockchain"]["reported"] >= 0.6 * test["ggo/generalblockchain"]["n"]
    assert test["normal_adult/nih_cxr14"]["reported"] <= 0.1 * test["normal_adult/nih_cxr14"]["n"]
