"""The COVID-19 figures that tell a score reading the lungs from one reading the collection.

All COVID-19 positives come from ieee8023, and most negatives from other collections, so a pooled AUC
rewards a model that recognises the collection. These figures take each AUC on images that the
collection cannot separate (data README, "What a naive model learns"):

- ``within_ieee8023_auc``: ieee8023 COVID-19 vs ieee8023 other findings (one collection);
- ``covid_vs_openist_auc``: ieee8023 COVID-19 vs OpenIST normal adults, a collection no covid run
  trains on;
- ``selection_score``: the mean of those two, the covid trainer's epoch rule and the cross-validation
  ranking (:func:`selection_aucs`);
- ``source_index``: P(COVID-19) separating ieee8023 non-COVID from NIH, both negative (0.5 = the score
  ignores the collection);
- per source: n, AUC, sensitivity and specificity at the operating threshold with Wilson 95% CIs;
- with the rows' findings: COVID-19 vs the collection's own "No Finding" pictures, NIH findings vs NIH
  "No Finding", and COVID-19 vs each kind of ieee8023 negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.metrics import bootstrap_ci, roc_auc, wilson_ci

WITHIN = "ieee8023"
HELD_OUT_NORMALS = ("openist",)
NO_FINDING = "no finding"


def has_finding(findings: Sequence[str]) -> bool:
    """True when the list names a finding other than "No Finding" (an empty list means none)."""
    return any(f.strip() and f.strip().lower() != NO_FINDING for f in findings)


def selection_aucs(
    scores: Sequence[float], labels: Sequence[int], datasets: Sequence[str]
) -> dict[str, float | None]:
    """Within-ieee8023 AUC, ieee8023 COVID-19 vs held-out normals AUC, and their mean (None if missing)."""
    s, y, d = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int), np.asarray(datasets)
    within = d == WITHIN
    held = np.isin(d, HELD_OUT_NORMALS) & (y == 0)
    pos = within & (y == 1)
    out: dict[str, float | None] = {"within": None, "vs_heldout_normals": None, "mean": None}
    if within.any() and len(set(y[within].tolist())) == 2:
        out["within"] = roc_auc(y[within], s[within])
    if held.any() and pos.any():
        m = pos | held
        out["vs_heldout_normals"] = roc_auc(y[m], s[m])
    if out["within"] is not None and out["vs_heldout_normals"] is not None:
        out["mean"] = 0.5 * (out["within"] + out["vs_heldout_normals"])
    return out


def auc_ci(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, Any] | None:
    """AUC with its bootstrap 95% CI, n and positives; None when ``y`` holds one class."""
    if len(set(y.tolist())) < 2:
        return None
    lo, hi = bootstrap_ci(roc_auc, y, s, n_boot=n_boot, seed=seed)
    return {"auc": roc_auc(y, s), "ci95": [lo, hi], "n": int(y.size), "positives": int(y.sum())}


def finding_figures(
    y: np.ndarray, s: np.ndarray, ds: np.ndarray, findings: Sequence[Sequence[str]], n_boot: int
) -> dict[str, Any]:
    """The figures that need the findings (see the module docstring)."""
    if len(findings) != y.size:
        raise ValueError(f"{len(findings)} findings for {y.size} scores")
    abnormal = np.array([has_finding(f) for f in findings])
    first = np.array([f[0] if f else "No Finding" for f in findings])
    ieee, nih = ds == "ieee8023", ds == "nih_cxr14"
    pos = ieee & (y == 1)
    out: dict[str, Any] = {}
    m = pos | (ieee & (y == 0) & ~abnormal)
    out["covid_vs_ieee8023_no_finding_auc"] = auc_ci(y[m], s[m], n_boot)
    out["nih_finding_vs_no_finding_auc"] = auc_ci(abnormal[nih].astype(int), s[nih], n_boot)
    by: dict[str, Any] = {}
    negatives = ieee & (y == 0)
    for kind in sorted(set(first[negatives].tolist())):
        these = negatives & (first == kind)
        e = auc_ci(y[pos | these], s[pos | these], n_boot)
        by[kind] = {"n": int(these.sum()), "auc": e["auc"] if e else None}
    out["within_ieee8023_by_finding"] = by
    return out


def _per_source(
    y: np.ndarray, s: np.ndarray, ds: np.ndarray, threshold: float, n_boot: int
) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for name in sorted(set(ds.tolist())):
        k = ds == name
        yy, ss = y[k], s[k]
        called = ss >= threshold
        e: dict[str, Any] = {
            "n": int(k.sum()),
            "positives": int(yy.sum()),
            "auc": auc_ci(yy, ss, n_boot)["auc"] if len(set(yy.tolist())) == 2 else None,
            "median_p": float(np.median(ss)),
            "mean_p": float(np.mean(ss)),
        }
        for lab, key in ((1, "sensitivity"), (0, "specificity")):
            sel = yy == lab
            if sel.any():
                hit = int((called[sel] == bool(lab)).sum())
                e[key] = {
                    "value": hit / int(sel.sum()),
                    "k": hit,
                    "n": int(sel.sum()),
                    "wilson_ci95": wilson_ci(hit, int(sel.sum())),
                }
            if lab == 0 and sel.any():
                e["median_p_negatives"] = float(np.median(ss[sel]))
        per[name] = e
    return per


def split_report(
    y: np.ndarray,
    s: np.ndarray,
    ds: np.ndarray,
    threshold: float,
    n_boot: int,
    removed: np.ndarray | None = None,
    findings: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Every figure of the module docstring for one set of scored images (``removed``: the scores of
    the same images with the lungs blanked)."""
    out: dict[str, Any] = {}
    ieee = ds == "ieee8023"
    pos = ieee & (y == 1)
    openist = (ds == "openist") & (y == 0)
    nih = ds == "nih_cxr14"
    out["within_ieee8023_auc"] = auc_ci(y[ieee], s[ieee], n_boot)
    m = pos | openist
    out["covid_vs_openist_auc"] = auc_ci(y[m], s[m], n_boot) if openist.any() else None
    if out["within_ieee8023_auc"] and out["covid_vs_openist_auc"]:
        pair = (out["within_ieee8023_auc"]["auc"], out["covid_vs_openist_auc"]["auc"])
        out["selection_score"] = 0.5 * (pair[0] + pair[1])
    else:
        out["selection_score"] = None
    out["pooled_auc"] = auc_ci(y, s, n_boot)
    m = ieee | nih
    out["pooled_auc_ieee_nih"] = auc_ci(y[m], s[m], n_boot)
    if removed is not None:
        both = len(set(y[m].tolist())) == 2
        out["lungs_removed_auc_ieee_nih"] = roc_auc(y[m], removed[m]) if both else None
        out["lungs_removed_distinct_scores"] = int(np.unique(np.round(removed[m], 6)).size)
    neg = ieee & (y == 0)
    out["source_index"] = (
        auc_ci(np.r_[np.ones(neg.sum()), np.zeros(nih.sum())].astype(int), np.r_[s[neg], s[nih]], n_boot)
        if neg.any() and nih.any()
        else None
    )
    if findings is not None:
        out.update(finding_figures(y, s, ds, findings, n_boot))
    out["per_source"] = _per_source(y, s, ds, threshold, n_boot)
    return out
