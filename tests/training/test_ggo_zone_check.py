"""Brixia lung zones (training.lung_zones) and the zone check of GGO models (ggo_zone_check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.lung_zones import ZONES, brixia_zones, split_lungs
from training.recipes.ggo_zone_check import (
    clear_zone_label,
    figures,
    grouped_auc,
    grouped_auc_pairs,
    read_brixia,
    zone_label,
    zone_scores,
)


def _two_lungs(joined: bool = False) -> np.ndarray:
    lung = np.zeros((90, 100), dtype=bool)
    lung[10:70, 10:40] = True  # image left = the patient's right lung
    lung[10:85, 60:90] = True  # the left lung reaches lower (the heart sits above its base)
    if joined:
        lung[40:45, 40:60] = True  # a predicted mask may bridge the mediastinum
    return lung


@pytest.mark.parametrize("joined", [False, True])
def test_zones_are_thirds_of_each_lung_right_lung_on_the_image_left(joined: bool) -> None:
    lung = _two_lungs(joined)
    left, right = split_lungs(lung)
    # cut in the middle of the emptiest columns (the gap, or the bridge across it)
    assert left[:, :50].sum() == left.sum() and right[:, 50:].sum() == right.sum()
    zones = brixia_zones(lung)
    assert set(np.unique(zones)) == set(range(7))
    assert not zones[~lung].any() and zones[lung].all()
    for label, rows, cols in ((1, (10, 30), (10, 40)), (2, (30, 50), (10, 40)), (3, (50, 70), (10, 40)),
                              (4, (10, 35), (60, 90)), (5, (35, 60), (60, 90)), (6, (60, 85), (60, 90))):
        assert (zones[slice(*rows), slice(*cols)] == label).all(), label
    with pytest.raises(ValueError, match="empty"):
        brixia_zones(np.zeros((5, 5), dtype=bool))


def test_zone_labels_need_both_raters() -> None:
    assert zone_label((0, 0)) == 0 and zone_label((1, 3)) == 1
    assert zone_label((0, 2)) is None and zone_label((2, 0)) is None


def test_grouped_auc_counts_only_pairs_inside_a_group_and_ties_as_half() -> None:
    values = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5])
    labels = np.array([1, 0, 1, 0, 1, 0])
    assert grouped_auc(values, labels, np.zeros(6)) == pytest.approx(
        # pairs (pos, neg): 0.9>all three (3), 0.2 beats 0.1 only (1), 0.5 beats 0.1, ties 0.5 (1.5)
        (3 + 1 + 1.5) / 9
    )
    groups = np.array([0, 0, 1, 1, 2, 2])
    assert grouped_auc(values, labels, groups) == pytest.approx((1 + 0 + 0.5) / 3)
    assert grouped_auc(values, np.ones(6, dtype=int), groups) is None
    assert grouped_auc_pairs(values, labels, groups) == (pytest.approx(1.5 / 3), 3)


def test_figures_separate_a_model_that_reads_the_zone_from_one_that_reads_the_picture() -> None:
    rng = np.random.default_rng(0)
    zones = []
    for picture in range(40):
        bright = rng.random()  # a picture-level offset (collection, exposure) the lungs do not explain
        for k in range(6):
            label = int(rng.random() < 0.5)
            zones.append({"patient": f"p{picture // 2}", "picture": f"img{picture}", "level": k % 3,
                          "label": label, "zone_reader": label + 0.3 * rng.random(),
                          "picture_reader": bright + 0.01 * rng.random()})
    good, blind = figures(zones, "zone_reader", n_boot=60), figures(zones, "picture_reader", n_boot=60)
    assert good["auc_same_picture"] == 1.0 and good["auc_all"] == 1.0
    assert good["auc_same_picture_ci95"][0] > 0.9
    assert 0.3 < blind["auc_same_picture"] < 0.7  # inside one picture it only sees noise
    assert blind["auc_same_picture_ci95"][0] < 0.5 < blind["auc_same_picture_ci95"][1]
    assert good["n_clear"] + good["n_abnormal"] == len(zones)
    assert good["auc_same_picture_level"] == 1.0 and 0.2 < blind["auc_same_picture_level"] < 0.8


def test_zone_scores_and_the_clear_zone_label_keep_away_from_diseased_zones() -> None:
    lung = _two_lungs()
    zones = brixia_zones(lung)
    prob = np.where(zones == 3, 0.9, 0.1)  # GGO in the right lower zone only
    s = zone_scores(prob, zones, 0.5)
    assert s["C"] == (1.0, pytest.approx(0.9)) and s["A"] == (0.0, pytest.approx(0.1))
    raters = {z: (0, 0) for z in ZONES} | {"C": (2, 3), "F": (0, 1)}  # C diseased, F disputed
    label = clear_zone_label(lung, raters, margin=0.05)
    assert label is not None and not (label & (zones == 3)).any() and not (label & (zones == 6)).any()
    assert label[(zones == 1)].all()  # a zone far from any other zone is labelled whole
    # B's pixels within 5 % of the lung's height (3 px) of C are left out: the zone lines are approximate
    assert not label[47:50, 10:40].any() and label[30:47, 10:40].all()
    assert clear_zone_label(lung, {z: (1, 1) for z in ZONES}, 0.05) is None


def test_the_published_scores_read_as_two_raters_per_zone(shared_data: Path) -> None:
    from training.recipes.ggo_zone_check import BRIXIA_CSV

    scores = read_brixia(shared_data / BRIXIA_CSV)
    assert len(scores) == 192
    one = next(iter(scores.values()))
    assert set(one) == set(ZONES) and all(len(v) == 2 and all(0 <= s <= 3 for s in v) for v in one.values())


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.skipif(not (MODELS / "ggo_segmentation" / "configs" / "metadata.json").is_file(),
                    reason="no shipped GGO bundle")
def test_the_check_and_the_weak_manifest_on_the_real_pictures(shared_data: Path, tmp_path: Path) -> None:
    import json

    from training.manifest import read_manifest, write_manifest
    from training.recipes.ggo_zone_check import brixia_rows, main

    out = tmp_path / "zones.json"
    common = ["--data-root", str(shared_data), "--ggo-manifest", "", "--cache-dir", str(tmp_path / "cache")]
    args = [*common, "--split", "validation", "--n-boot", "50", "--brighter-than-lung", "--out", str(out),
            "--det-bundle", f"detector={MODELS / 'ggo_detection'}"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["pictures"] >= 25
    figs = res["figures"]
    assert {"baseline/extent", "shipped/extent", "shipped/mean_prob", "shipped+brighter/extent",
            "detector/box_cover"} <= set(figs)
    for f in figs.values():
        assert f["n_clear"] > 20 and f["n_abnormal"] > 20 and f["auc_same_picture_pairs"] > 0
        assert 0.0 <= f["auc_all"] <= 1.0 and f["auc_all_ci95"][0] <= f["auc_all"] <= f["auc_all_ci95"][1]

    # weak rows: only train-split pictures, labelled inside their lungs' clear zones, GGO mask empty
    rows, _ = brixia_rows(shared_data, None)
    base = tmp_path / "base.csv"
    train = sorted((r for r in rows if r.split == "train"), key=lambda r: r.image_path)
    # every picture but 20 train ones is in the base manifest (with its split): only those 20 are split
    # afresh and can get a weak row, so few lung masks are predicted
    fresh = {r.image_path for r in train[:20]}
    write_manifest([r for r in rows if r.image_path not in fresh], base)
    weak_csv = tmp_path / "weak.csv"
    assert main([*common[:2], "--ggo-manifest", str(base), "--cache-dir", str(tmp_path / "cache"),
                 "--write-weak-manifest", str(weak_csv)]) == 0
    merged = read_manifest(weak_csv)
    weak = [r for r in merged if r.ggo_labelled]
    assert len(merged) == len(weak) + len(rows) - 20 and len(weak) >= 2
    assert {r.split for r in weak} == {"train"} and {r.image_path for r in weak} <= fresh
    from training.cache import load_mask

    for r in weak[:3]:
        labelled, ggo = load_mask(r.ggo_labelled), load_mask(r.ggo_mask)
        assert not ggo.any() and 0 < labelled.mean() < 0.8  # lung pixels of clear zones only
