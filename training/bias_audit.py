"""The per-dataset audit of a shipped bundle (metadata ``bias_audit``), evaluated from the shipped file.

Overall and per dataset of the manifest's test split: the task's metrics, and for a classifier its
accuracy, sensitivity and specificity as proportions with bootstrap and Wilson 95% CIs. A model that
is good on one collection and poor on another shows it here rather than in a pooled figure.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate import evaluate_bundle
from training.manifest import ManifestRow, read_manifest, write_manifest
from training.metrics import wilson_ci


def boot_prop(k: int, n: int, seed: int = 0) -> list[float] | None:
    """Parametric bootstrap 95% CI of the proportion k / n (2000 binomial draws)."""
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    v = rng.binomial(n, k / n, 2000) / n
    return [float(x) for x in np.quantile(v, [0.025, 0.975])]


def prop_ci(m: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, sensitivity and specificity of a confusion matrix (tp/fp/tn/fn) with their CIs."""
    out: dict[str, Any] = {}
    tp, fp, tn, fn = (m.get(k) for k in ("tp", "fp", "tn", "fn"))
    if tp is None or fp is None or tn is None or fn is None:
        return out
    for name, k, n in (
        ("accuracy", tp + tn, tp + tn + fp + fn),
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
    ):
        out[name] = {
            "value": k / n if n else None,
            "k": k,
            "n": n,
            "bootstrap_ci95": boot_prop(k, n),
            "wilson_ci95": wilson_ci(k, n),
        }
    return out


def bias_audit(
    bundle: Path, manifest: Path, *, lung_bundle: Path | None = None, cache_dir: Path | None = None
) -> dict[str, Any]:
    """The audit of ``bundle`` on the test split of ``manifest``: overall and, with two or more
    datasets, per dataset (a dataset the model cannot score gets its error instead)."""
    note = "test split of the run manifest, evaluated from the shipped (fp16) bundle"
    audit: dict[str, Any] = {"note": note}
    m = evaluate_bundle(bundle, manifest, "test", lung_bundle=lung_bundle, cache_dir=cache_dir)["metrics"]
    m.pop("reliability", None)
    audit["overall"] = {k: v for k, v in m.items() if k != "dice_per_image"}
    audit["overall"]["proportion_cis"] = prop_ci(m)
    by_ds: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in read_manifest(manifest):
        if r.split == "test":
            by_ds[r.dataset].append(r)
    if len(by_ds) > 1:
        audit["per_dataset"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for ds, rs in sorted(by_ds.items()):
                path = Path(tmp) / f"{ds}.csv"
                write_manifest(rs, path)
                try:
                    rep = evaluate_bundle(bundle, path, "test", lung_bundle=lung_bundle, cache_dir=cache_dir)
                except ValueError as exc:
                    audit["per_dataset"][ds] = {"error": str(exc)}
                    continue
                figures = rep["metrics"]
                figures.pop("reliability", None)
                figures.pop("dice_per_image", None)
                figures["proportion_cis"] = prop_ci(figures)
                audit["per_dataset"][ds] = figures
    return audit
