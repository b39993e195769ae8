"""Metric functions against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics as M


def test_auc_hand_cases() -> None:
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3/4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (0.5 = 0.5) -> 0.5, (0.9 > 0.5) -> 1
    assert M.roc_auc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)
    assert M.roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc([1, 1], [0.2, 0.3])


def test_wilson_ci_hand_cases() -> None:
    # 8/8: centre (1 + z^2/16) / (1 + z^2/8) = 0.8378, half-width 1.96 sqrt(z^2/256) / (1 + z^2/8) = 0.1622
    lo, hi = M.wilson_ci(8, 8)
    assert lo == pytest.approx(0.6756, abs=1e-4) and hi == pytest.approx(1.0)
    # 5/10, symmetric around 1/2: half-width 1.96 sqrt(0.025 + z^2/400) / (1 + z^2/10) = 0.2634
    lo, hi = M.wilson_ci(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(2 * 0.2634, abs=1e-3)
    assert M.wilson_ci(0, 0) is None


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 50 + [1] * 50)
    s = np.concatenate([rng.normal(0, 1, 50), rng.normal(1, 1, 50)])
    lo, hi = M.bootstrap_ci(M.roc_auc, y, s, n_boot=300, seed=1)
    assert (lo, hi) == M.bootstrap_ci(M.roc_auc, y, s, n_boot=300, seed=1)
    assert lo < M.roc_auc(y, s) < hi and hi - lo < 0.3


def test_confusion_metrics_from_the_matrix() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4]
    m = M.confusion_metrics(y, s, threshold=0.5)
    # predicted positive: 0.9, 0.6, 0.7 -> tp 2, fp 1; fn 1 (0.2); tn 3
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 7)
    none = M.confusion_metrics([0, 0], [0.1, 0.2], 0.5)
    assert none["sensitivity"] is None and none["ppv"] is None and none["f1"] is None


def test_threshold_is_chosen_on_given_scores() -> None:
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.6, 0.5, 0.7, 0.9]
    # t=0.7: sens 2/3 spec 1 -> J 0.667; t=0.5: sens 1 spec 2/3 -> J 0.667 (tie: higher t wins);
    # the threshold is then halfway to the next lower score: (0.7 + 0.6) / 2.
    assert M.choose_threshold(y, s) == pytest.approx(0.65)
    # sensitivity 1.0 first reached at t=0.5; next lower score 0.2 -> 0.35
    assert M.choose_threshold(y, s, method="sensitivity", target=1.0) == pytest.approx(0.35)
    # the lowest score chosen: nothing below it, the score itself
    assert M.choose_threshold([1, 1, 0], [0.1, 0.3, 0.2], method="sensitivity", target=1.0) == 0.1
    # the margin: same validation confusion matrix at the returned threshold as at the chosen score
    pred_at = [v >= M.choose_threshold(y, s) for v in s]
    assert pred_at == [v >= 0.7 for v in s]


def test_brier_and_reliability() -> None:
    y, p = [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.05]
    assert M.brier_score(y, p) == pytest.approx((0.01 + 0.04 + 0.16 + 0.0025) / 4)
    table = M.reliability_table(y, p, bins=2)
    assert [r["count"] for r in table] == [2, 2]
    assert table[1]["mean_predicted"] == pytest.approx(0.75) and table[1]["observed_rate"] == 1.0
    assert M.reliability_table([1], [1.0], bins=10)[-1]["count"] == 1  # p = 1.0 lands in the last bin
    assert M.expected_calibration_error(table) == pytest.approx((2 * 0.125 + 2 * 0.25) / 4)


def test_dice_iou_per_image() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True  # 4 px
    b[0, 2:4] = True
    b[1, 0:2] = True  # 4 px, 2 shared
    assert M.dice_iou(a, b) == pytest.approx((2 * 2 / 8, 2 / 6))
    assert M.dice_iou(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)
    assert M.dice_iou(a, np.zeros((4, 4))) == (0.0, 0.0)
    # per image, not pooled: a perfect big image and a missed small one average to 0.5
    big = np.ones((10, 10), bool)
    small = np.zeros((10, 10), bool)
    small[0, 0] = True
    report = M.segmentation_report([(big, big), (np.zeros((10, 10), bool), small)], n_boot=50)
    assert report["dice_mean"] == pytest.approx(0.5) and report["n"] == 2


def test_box_iou_and_ap_hand_case() -> None:
    assert M.box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    truths = [np.array([[0, 0, 10, 10]]), np.array([[20, 20, 30, 30]])]
    preds = [np.array([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.8]]), np.array([[20, 20, 30, 31, 0.7]])]
    # sorted: hit (P 1, R .5), miss (P .5, R .5), hit (P 2/3, R 1); precision envelope sampled at
    # 101 recalls: 1 below R .5, 2/3 from R .5 (the later point at equal recall wins), and the
    # sentinel 0 at R = 1 (COCO/ultralytics construction), integrated with the trapezoid rule
    x = np.linspace(0, 1, 101)
    curve = np.where(x < 0.5, 1.0, 2 / 3)
    curve[-1] = 0.0
    expected = float(np.trapezoid(curve, x))
    assert M.detection_ap(preds, truths, 0.5) == pytest.approx(expected, abs=1e-9)
    # the third box has IoU 100/110 = 0.909: a hit up to IoU 0.9, a miss at 0.95
    report = M.detection_report(preds, truths)
    assert report["map50"] == pytest.approx(expected)
    assert report["map50_95"] < report["map50"]
    assert M.detection_ap([np.zeros((0, 5))], [np.zeros((0, 4))], 0.5) is not None
    assert math.isnan(M.detection_ap([np.zeros((0, 5))], [np.zeros((0, 4))], 0.5))
    assert M.detection_ap([np.array([[0, 0, 1, 1, 0.5]])], [np.zeros((0, 4))], 0.5) == 0.0


def test_ap_matches_ultralytics_compute_ap(yolo_state: object) -> None:
    """Our 101-point AP equals ultralytics' own compute_ap on the same precision/recall curve."""
    from ultralytics.utils.metrics import compute_ap

    recall = np.array([0.1, 0.2, 0.2, 0.5, 0.6, 0.9])
    precision = np.array([1.0, 1.0, 0.66, 0.7, 0.55, 0.5])
    assert M.average_precision(recall, precision) == pytest.approx(compute_ap(recall, precision)[0], abs=1e-9)
