"""Evaluation metrics, each checked against hand-computed cases in ``tests/training``.

The reference project's Dice was computed over the whole batch (large lungs drown small misses)
and its accuracy from rounded scores of a different threshold. Here:

- Dice and IoU are per image, on the foreground, then averaged with a bootstrap CI over images;
  an image whose truth and prediction are both empty scores 1 (a correct "nothing there"), and
  the number of such images is reported beside the mean.
- Accuracy, sensitivity, specificity, PPV, NPV and F1 come from one confusion matrix at one
  threshold, the operating threshold chosen on the *validation* split.
- AUC is the Mann-Whitney statistic (ties count one half), with a seeded, class-stratified
  bootstrap 95% CI. Calibration: Brier score and a reliability table.
- Box mAP follows the COCO/ultralytics definition: greedy matching by confidence, one match per
  truth box, 101-point interpolated precision envelope, mAP50-95 averaged over IoU 0.50:0.05:0.95.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata


def _binary(y: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(y)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return arr.astype(np.int64)


def roc_auc(y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties 1/2."""
    yy, s = _binary(y), np.asarray(scores, dtype=np.float64)
    if yy.shape != s.shape:
        raise ValueError(f"labels {yy.shape} and scores {s.shape} differ in shape")
    n_pos, n_neg = int(yy.sum()), int((1 - yy).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes (positives {n_pos}, negatives {n_neg})")
    ranks = rankdata(s)
    return float((ranks[yy == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(y, scores)``, resampling within each class (seeded)."""
    yy, s = _binary(y), np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(yy == 1), np.flatnonzero(yy == 0)
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        values.append(metric(yy[idx], s[idx]))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap CI of per-image values (e.g. Dice)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to average")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def wilson_ci(k: int, n: int) -> list[float] | None:
    """95% Wilson score interval of the proportion k/n (None when n is 0).

    Unlike a bootstrap it stays informative at 0/n and n/n, which small test splits produce
    (8 of 8 laterals).
    """
    if n == 0:
        return None
    z, p = 1.96, k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [float(c - h), float(c + h)]


def choose_threshold(
    y: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    method: str = "youden",
    target: float = 0.9,
) -> float:
    """Operating threshold from VALIDATION data; ``score >= threshold`` means positive.

    ``youden``: maximise sensitivity + specificity - 1 (ties: the higher threshold).
    ``sensitivity``: the highest threshold whose sensitivity is at least ``target``.
    Candidates are the observed scores, so the choice is exact, not grid-limited; the threshold
    returned is then the midpoint between the chosen score and the next lower observed score. Both
    give the same validation confusion matrix, but a threshold equal to the lowest accepted
    positive's score leaves no margin: a new positive scoring a hair below it is missed (seen with
    the projection model, 9 validation laterals and a threshold of 0.996).
    """
    yy, s = _binary(y), np.asarray(scores, dtype=np.float64)
    if yy.sum() == 0 or (1 - yy).sum() == 0:
        raise ValueError("choosing a threshold needs both classes in the validation data")
    best_t, best_v = 0.5, -math.inf
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        sens = float((pred & (yy == 1)).sum() / (yy == 1).sum())
        spec = float((~pred & (yy == 0)).sum() / (yy == 0).sum())
        if method == "youden":
            value = sens + spec - 1
            if value > best_v + 1e-12:
                best_t, best_v = t, value
        elif method == "sensitivity":
            if sens >= target:
                return _midpoint_below(float(t), s)
        else:
            raise ValueError(f"unknown threshold method {method!r} (youden|sensitivity)")
    return _midpoint_below(float(best_t), s)


def _midpoint_below(threshold: float, scores: np.ndarray) -> float:
    """Halfway between ``threshold`` and the largest score below it (itself when none is below)."""
    below = scores[scores < threshold]
    return threshold if below.size == 0 else float((threshold + below.max()) / 2)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def confusion_metrics(
    y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, Any]:
    """Confusion matrix at ``threshold`` and the rates derived from it (None where undefined)."""
    yy, s = _binary(y), np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    tp = int((pred & (yy == 1)).sum())
    fp = int((pred & (yy == 0)).sum())
    tn = int((~pred & (yy == 0)).sum())
    fn = int((~pred & (yy == 1)).sum())
    sens, ppv = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    f1 = None if sens is None or ppv is None or sens + ppv == 0 else 2 * sens * ppv / (sens + ppv)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": _ratio(tn, tn + fn),
        "f1": f1,
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def brier_score(y: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    yy, p = _binary(y), np.asarray(probs, dtype=np.float64)
    return float(np.mean((p - yy) ** 2))


def reliability_table(
    y: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, bins: int = 10
) -> list[dict[str, Any]]:
    """Equal-width probability bins: count, mean predicted probability, observed positive rate.

    Bin k holds ``k/bins <= p < (k+1)/bins`` (the last bin includes 1.0); empty bins are listed
    with count 0 so tables of different models line up.
    """
    yy, p = _binary(y), np.asarray(probs, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    table = []
    for k in range(bins):
        sel = which == k
        n = int(sel.sum())
        table.append(
            {
                "bin_low": k / bins,
                "bin_high": (k + 1) / bins,
                "count": n,
                "mean_predicted": float(p[sel].mean()) if n else None,
                "observed_rate": float(yy[sel].mean()) if n else None,
            }
        )
    return table


def expected_calibration_error(table: Sequence[dict[str, Any]]) -> float:
    total = sum(r["count"] for r in table)
    return float(
        sum(r["count"] * abs(r["mean_predicted"] - r["observed_rate"]) for r in table if r["count"])
        / max(total, 1)
    )


def binary_classification_report(
    y: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC + CI, confusion metrics at the (validation-chosen) threshold, Brier, reliability."""
    yy, p = _binary(y), np.asarray(probs, dtype=np.float64)
    report: dict[str, Any] = {"n": int(yy.size), "positives": int(yy.sum()), "negatives": int((1 - yy).sum())}
    if report["positives"] and report["negatives"]:
        report["auc"] = roc_auc(yy, p)
        report["auc_ci95"] = list(bootstrap_ci(roc_auc, yy, p, n_boot=n_boot, seed=seed))
    else:
        report["auc"], report["auc_ci95"] = None, None
    report.update(confusion_metrics(yy, p, threshold))
    report["brier"] = brier_score(yy, p)
    table = reliability_table(yy, p)
    report["reliability"] = table
    report["ece"] = expected_calibration_error(table)
    return report


# -- segmentation ---------------------------------------------------------------------------------
def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of one image's foreground; both empty = (1, 1)."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    inter = int((p & t).sum())
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / (total - inter)


def segmentation_report(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-image Dice/IoU with mean and bootstrap CI over images."""
    dice, iou = zip(*(dice_iou(p, t) for p, t in pairs), strict=True) if pairs else ((), ())
    empty = sum(1 for p, t in pairs if not np.any(p) and not np.any(t))
    if not pairs:
        return {"n": 0}
    d_mean, d_lo, d_hi = mean_ci(dice, n_boot=n_boot, seed=seed)
    i_mean, i_lo, i_hi = mean_ci(iou, n_boot=n_boot, seed=seed)
    return {
        "n": len(pairs),
        "both_empty": empty,
        "dice_mean": d_mean,
        "dice_ci95": [d_lo, d_hi],
        "dice_median": float(np.median(dice)),
        "iou_mean": i_mean,
        "iou_ci95": [i_lo, i_hi],
        "dice_per_image": [float(x) for x in dice],
    }


# -- boxes ----------------------------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N, 4) and (M, 4) boxes x0, y0, x1, y1."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0, iy0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    ix1, iy1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP (COCO; ultralytics' ``compute_ap`` definition).

    Precision is 0 beyond the highest recall reached (sentinel at that recall), so a detector that
    finds 90% of the boxes gets no credit between recall 0.9 and 1.
    """
    last = recall[-1] if len(recall) else 1.0
    mrec = np.concatenate(([0.0], recall, [last], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))


def detection_ap(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], iou_threshold: float) -> float:
    """Single-class AP over a set of images.

    ``preds[i]``: (N, 5) x0, y0, x1, y1, confidence; ``truths[i]``: (M, 4). Predictions are
    matched in descending confidence to the unmatched truth of highest IoU >= threshold.
    No truth box at all gives AP 0 when there are predictions, else NaN (undefined).
    """
    records: list[tuple[float, int]] = []
    n_truth = 0
    for p, t in zip(preds, truths, strict=True):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 5)
        t = np.asarray(t, dtype=np.float64).reshape(-1, 4)
        n_truth += len(t)
        order = np.argsort(-p[:, 4], kind="stable")
        ious = box_iou(p[order, :4], t) if len(t) else np.zeros((len(p), 0))
        taken = np.zeros(len(t), dtype=bool)
        for k, j in enumerate(order):
            hit = 0
            if len(t):
                cand = np.where(taken, -1.0, ious[k])
                best = int(np.argmax(cand))
                if cand[best] >= iou_threshold:
                    taken[best] = True
                    hit = 1
            records.append((float(p[j, 4]), hit))
    if n_truth == 0:
        return 0.0 if records else float("nan")
    if not records:
        return 0.0
    records.sort(key=lambda r: -r[0])
    hits = np.array([r[1] for r in records], dtype=np.float64)
    tp = np.cumsum(hits)
    fp = np.cumsum(1 - hits)
    return average_precision(tp / n_truth, tp / (tp + fp))


def detection_report(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, Any]:
    aps = [detection_ap(preds, truths, t) for t in np.arange(0.5, 0.96, 0.05)]
    return {
        "n_images": len(truths),
        "n_truth_boxes": int(sum(len(np.reshape(t, (-1, 4))) for t in truths)),
        "map50": aps[0],
        "map50_95": float(np.mean(aps)),
    }
