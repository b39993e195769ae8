"""training.ggo_measure, shared by the two GGO recipes: the operating point per collection, the logistic fit,
the report's intervals and AUC (and where they agree with training.metrics), the split filter and the
measurement cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.ggo_measure import (
    append_records,
    auc,
    bootstrap_mean,
    fit_logistic,
    logistic_score,
    lowest_threshold,
    normal_scores,
    read_cache,
    usable,
    wilson,
)
from training.metrics import mean_ci, roc_auc, wilson_ci


def test_lowest_threshold_keeps_every_collection_at_or_below_ten_percent() -> None:
    scores = {"a": [i / 20 for i in range(20)], "b": [0.1, 0.2, 0.3]}
    t = lowest_threshold(scores)
    assert sum(s >= t for s in scores["a"]) <= 2 and sum(s >= t for s in scores["b"]) == 0
    # "a" (20 images: 2 may pass) sets it midway between its 3rd (0.85) and 2nd (0.90) highest scores;
    # "b" (3 images: none may pass) alone would set it just above 0.3.
    assert t == pytest.approx(0.875)
    assert 0.3 < lowest_threshold({"b": scores["b"]}) < 0.3001
    assert lowest_threshold({"c": [0.5] * 10}) > 0.5  # ties cannot be split: none may pass


def test_normal_scores_group_the_normal_adults_by_collection() -> None:
    recs = [{"kind": "normal_adult", "dataset": "nih", "s": 0.1}, {"kind": "ggo", "dataset": "gb", "s": 0.9},
            {"kind": "normal_adult", "dataset": "openist", "s": 0.2},
            {"kind": "normal_adult", "dataset": "nih", "s": 0.3}, {"kind": "child", "dataset": "k", "s": 0.4}]
    normals = normal_scores(recs, [r["s"] for r in recs])
    assert dict(normals) == {"nih": [0.1, 0.3], "openist": [0.2]}
    assert normals["ieee8023"] == []  # a collection without normals reads as empty


def test_fit_logistic_finds_the_direction_of_the_evidence() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0.2, 0.05, (100, 2)), rng.normal([0.4, 0.2], 0.05, (100, 2))])
    y = np.r_[np.zeros(100), np.ones(100)]
    mean, scale, w = fit_logistic(x, y, penalty=1e-2 * len(x), steps=50)
    assert w[1] > 1.0 and abs(w[2]) < 0.5  # the first feature separates, the second does not
    np.testing.assert_allclose(mean, x.mean(axis=0))
    np.testing.assert_allclose(scale, x.std(axis=0))
    p = logistic_score((mean, scale, w), x)
    assert p[y == 1].mean() > 0.8 and p[y == 0].mean() < 0.2


def test_balanced_fit_is_not_pulled_towards_the_larger_class() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, (400, 3))  # no evidence at all
    y = (np.arange(400) < 40).astype(float)  # 10 % positives
    plain = fit_logistic(x, y, penalty=1.0, steps=100)
    balanced = fit_logistic(x, y, penalty=1.0, steps=100, balanced=True)
    assert plain[2][0] == pytest.approx(math.log(40 / 360), abs=0.1)
    assert abs(balanced[2][0]) < 0.1
    assert logistic_score(balanced, x).mean() == pytest.approx(0.5, abs=0.05)


def test_wilson_is_metrics_wilson_ci_rounded_and_clipped() -> None:
    low, high = wilson(0, 14)
    assert low == 0.0 and 0.2 < high < 0.23
    assert wilson(7, 14)[0] < 0.5 < wilson(7, 14)[1]
    assert wilson(14, 14)[1] == 1.0
    for n in range(1, 60):
        for k in range(n + 1):
            ci = wilson_ci(k, n)
            assert ci is not None
            assert wilson(k, n) == [round(max(0.0, ci[0]), 3), round(min(1.0, ci[1]), 3)]
    assert all(math.isnan(v) for v in wilson(0, 0))  # no images: no interval, but a row still prints


def test_bootstrap_mean_is_metrics_mean_ci_rounded() -> None:
    rng = np.random.default_rng(3)
    values = rng.random(17).tolist()
    _, low, high = mean_ci(values, n_boot=2000, seed=0)
    assert bootstrap_mean(values) == [round(low, 3), round(high, 3)]
    assert bootstrap_mean([0.4, 0.4, 0.4]) == [0.4, 0.4]
    assert bootstrap_mean([0.7]) is None and bootstrap_mean([]) is None


def test_auc_counts_ties_half_and_is_nan_without_a_class() -> None:
    assert auc([0.5], [0.5]) == 0.5
    assert auc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.875)  # 3 wins and a tie of 4 pairs
    assert math.isnan(auc([], [0.1])) and math.isnan(auc([0.1], []))
    rng = np.random.default_rng(4)
    pos, neg = (rng.integers(0, 5, 30) / 4).tolist(), (rng.integers(0, 5, 25) / 4).tolist()
    assert auc(pos, neg) == pytest.approx(roc_auc([1] * 30 + [0] * 25, pos + neg), abs=1e-12)


def test_usable_leaves_out_what_the_segmentation_model_saw() -> None:
    recs = [{"split": split, "seen_split": seen, "id": f"{split}/{seen}"}
            for split in ("train", "validation", "test") for seen in ("", "train", "validation", "test")]
    assert {r["id"] for r in usable(recs, "train")} == {"train/", "train/train", "train/validation",
                                                         "train/test"}
    assert {r["id"] for r in usable(recs, "validation")} == {"validation/", "validation/validation",
                                                              "validation/test"}
    assert {r["id"] for r in usable(recs, "test")} == {"test/", "test/test"}


def test_cache_appends_and_reads_back_by_path(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "features.jsonl"
    assert read_cache(path) == {}
    append_records(path, [{"path": "a.png", "x": 1}, {"path": "b.png", "x": 2}])
    append_records(path, [{"path": "a.png", "x": 3}])
    assert read_cache(path) == {"a.png": {"path": "a.png", "x": 3}, "b.png": {"path": "b.png", "x": 2}}
    assert len(path.read_text().splitlines()) == 3
