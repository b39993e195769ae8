"""What the lung silhouette alone says: a linear model on WHICH input pixels are lung, out of fold.

    .venv/bin/python -m training.recipes.silhouette_check CONFIG [--grid 16] [--l2 0.01] \
        [--folds runs/crossval/<run name>/folds.csv] [--n-boot 1000] [--out runs/silhouette_<run name>.json] \
        [--oof-dir DIR [--mean-with CV_DIR [CV_DIR ...]] [--silhouette-weight 0.5]]

Why: a lungs-only covid input still shows the shape, size and place of the lung mask in the frame (the
non-lung pixels are a constant). That silhouette carries disease (the lungs bundle leaves dense
consolidation out of the mask) and collection (framing, patient position, the mask style a collection's
pictures get), and a CNN can read it. This check measures how much, the way the lungs-removed check measures
what lies outside the lungs.

For each picture of CONFIG's cross-validation pool (``folds.csv`` of ``training.recipes.crossval``; run that
first), the network input is prepared exactly as CONFIG's run prepares it
(``training.trainers.loop.classification_inputs``, masks from ``[run] lung_bundle``). Three feature sets,
each from ``grid x grid`` mean-pooled thumbnails of the input:

- ``silhouette``: 1 where the input pixel is lung, 0 elsewhere (pixels equal to the input's outside value);
- ``intensity``: the input itself (the lung pixels' z-scores and the outside value);
- ``asymmetry``: how much the two sides of the frame differ, |x - x mirrored left-right|, of the silhouette
  and of the intensity, the left half of each thumbnail (the right half repeats it). Why: COVID-19 pneumonia
  is usually bilateral, bacterial pneumonia often one lobe of one lung.

For fold k an L2 logistic regression (standardised features, fixed ``--l2``: no epoch or setting is chosen,
so it trains on every other fold) is fitted on the folds' rows of the datasets CONFIG trains on
(weighted as the recipe's ``[train] sampling`` draws them: ``source_balanced`` gives each source x class
equal weight) and scores fold k.
The pooled out-of-fold scores get the figures of ``training.recipes.covid_compare.split_report``.

``--oof-dir DIR`` also writes the silhouette model's out-of-fold probabilities as ``DIR/oof_fold<k>.csv``
(the cross-validation's format, with its ``folds.csv``), so ``training.recipes.crossval --aggregate`` can
report and pair them. With ``--mean-with CV_DIR ...`` the score written is instead
``w x P(silhouette) + (1 - w) x`` the mean of the probabilities in each ``CV_DIR/oof_fold<k>.csv``
(cross-validated CNNs on the same folds), ``w = --silhouette-weight`` (0.5: the combination of
``covid_ms_zscore_plus_silhouette.toml``; 0: the CNNs' mean alone).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FIGURES = ("within_ieee8023_auc", "covid_vs_openist_auc", "covid_vs_ieee8023_no_finding_auc",
           "nih_finding_vs_no_finding_auc", "pooled_auc_ieee_nih", "source_index")


def thumbnails(inputs: np.ndarray, grid: int) -> np.ndarray:
    """(N, S, S) -> (N, grid * grid) block means; S must be a multiple of ``grid``."""
    n, size, _ = inputs.shape
    if size % grid:
        raise ValueError(f"input size {size} is not a multiple of grid {grid}")
    k = size // grid
    return inputs.reshape(n, grid, k, grid, k).mean(axis=(2, 4)).reshape(n, -1)


def asymmetry(inputs: np.ndarray, grid: int) -> np.ndarray:
    """Left half of the ``grid x grid`` thumbnail of |x - x mirrored left-right|.

    The right half would repeat it, mirrored."""
    diff = thumbnails(np.abs(inputs - inputs[:, :, ::-1]), grid).reshape(len(inputs), grid, grid)
    return diff[:, :, : grid // 2].reshape(len(inputs), -1)


def fit_weights(rows: Sequence, spec: Any, sampling: str) -> np.ndarray:
    """The rows' weights under the recipe's ``[train] sampling`` (``training.data.sample_weights``),
    summing to 1."""
    from training.data import sample_weights

    w = np.asarray(sample_weights(rows, spec, sampling) or [1.0] * len(rows), dtype=np.float64)
    return w / w.sum()


def weighted_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float) -> np.ndarray:
    """Coefficients (features..., intercept) of a weighted L2 logistic regression (L-BFGS, float64)."""
    a = torch.tensor(x, dtype=torch.float64)
    t = torch.tensor(y, dtype=torch.float64)
    wt = torch.tensor(w, dtype=torch.float64)
    coef = torch.zeros(a.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([coef], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = a @ coef[:-1] + coef[-1]
        loss = (wt * torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")).sum()
        loss = loss + l2 * (coef[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return coef.detach().numpy()


def out_of_fold_scores(
    features: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    trainable: np.ndarray,
    weigh: Callable[[np.ndarray], np.ndarray],
    l2: float,
) -> np.ndarray:
    """Fold k's scores from a model fitted on the trainable rows of every other fold;
    ``weigh(fit)`` gives the weights of the rows selected by the boolean mask ``fit``."""
    scores = np.zeros(len(features))
    for k in sorted(set(folds.tolist())):
        fit, score = (folds != k) & trainable, folds == k
        mu, sd = features[fit].mean(axis=0), features[fit].std(axis=0) + 1e-6
        coef = weighted_logistic((features[fit] - mu) / sd, y[fit], weigh(fit), l2)
        scores[score] = ((features[score] - mu) / sd) @ coef[:-1] + coef[-1]
    return scores


def write_oof(
    out_dir: Path,
    folds_csv: Path,
    rows: list,
    labels: np.ndarray,
    folds: np.ndarray,
    probs: np.ndarray,
    mean_with: Sequence[Path] = (),
    weight: float = 0.5,
) -> None:
    """``oof_fold<k>.csv`` files of ``probs`` (or of ``weight x probs + (1 - weight) x`` the mean of
    ``mean_with``'s probabilities) plus ``folds.csv``."""
    import shutil

    from training.errors import ConfigError
    from training.recipes.crossval import OOF_COLUMNS, read_records

    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"silhouette weight {weight} is not in [0, 1]")
    other: dict[str, float] = {}
    for cv in mean_with:
        scores: dict[str, float] = {}
        for k in sorted(set(folds.tolist())):
            path = cv / f"oof_fold{k}.csv"
            if not path.is_file():
                raise ConfigError(f"{path} not found: cross-validate that recipe on the same folds first")
            scores.update({rec["image_path"]: float(rec["score"]) for rec in read_records(path)})
        missing = [r.image_path for r in rows if r.image_path not in scores]
        if missing:
            raise ConfigError(f"{cv} has no score for {len(missing)} pictures, e.g. {missing[0]}")
        for r in rows:
            other[r.image_path] = other.get(r.image_path, 0.0) + scores[r.image_path] / len(mean_with)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folds_csv, out_dir / "folds.csv")
    for k in sorted(set(folds.tolist())):
        with (out_dir / f"oof_fold{k}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(OOF_COLUMNS)
            for r, label, f, p in zip(rows, labels, folds, probs, strict=True):
                if f == k:
                    score = weight * p + (1 - weight) * other[r.image_path] if other else p
                    w.writerow([r.image_path, r.patient_id, r.dataset, int(label), f"{score:.6f}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--l2", type=float, default=0.01)
    ap.add_argument("--folds", type=Path, default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--oof-dir", type=Path, default=None, help="write the silhouette out-of-fold scores here")
    ap.add_argument("--mean-with", type=Path, nargs="+", default=[],
                    help="cross-validation folders: combine with the mean of their out-of-fold probabilities")
    ap.add_argument("--silhouette-weight", type=float, default=0.5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.config import load_config
    from training.data import collect_rows
    from training.errors import ConfigError
    from training.recipes.covid_compare import split_report
    from training.recipes.crossval import cv_dir
    from training.tasks import TASK_SPECS
    from training.trainers.loop import classification_inputs, input_spec_dict

    try:
        cfg = load_config(args.config)
        folds_csv = args.folds or cv_dir(cfg) / "folds.csv"
        if not folds_csv.is_file():
            raise ConfigError(f"{folds_csv} not found: run training.recipes.crossval {args.config} first")
        fold_of = {r["image_path"]: int(r["fold"]) for r in csv.DictReader(folds_csv.open())}
        spec = TASK_SPECS[cfg.task]
        all_rows = [r for r in collect_rows(cfg) if spec.accepts(r)]
        trained_on = {r.dataset for r in all_rows if r.split == "train"}
        rows = [r for r in all_rows if r.image_path in fold_of]
        in_spec = input_spec_dict(cfg, spec)
        rows, arrays = classification_inputs(cfg, spec, rows)
        inputs = np.stack([a[0] for a in arrays]).astype(np.float64)
        lung = (inputs != in_spec["outside_value"]).astype(np.float64)
        feature_sets = {
            "silhouette": thumbnails(lung, args.grid),
            "intensity": thumbnails(inputs, args.grid),
            "asymmetry": np.concatenate([asymmetry(lung, args.grid), asymmetry(inputs, args.grid)], axis=1),
        }
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    y = np.array([spec.label_of(r) for r in rows], dtype=int)
    ds = np.array([r.dataset for r in rows])
    folds = np.array([fold_of[r.image_path] for r in rows])
    trainable = np.isin(ds, sorted(trained_on))

    def weigh(fit: np.ndarray) -> np.ndarray:
        return fit_weights([r for r, f in zip(rows, fit, strict=True) if f], spec, cfg.train.sampling)

    report: dict[str, Any] = {"config": str(args.config), "folds": str(folds_csv), "grid": args.grid,
                              "l2": args.l2, "images": len(rows), "features": {}}
    for name, features in feature_sets.items():
        scores = out_of_fold_scores(features, y, folds, trainable, weigh, args.l2)
        probs = 1 / (1 + np.exp(-scores))
        full = split_report(y, probs, ds, 0.5, args.n_boot, None, [r.findings for r in rows])
        report["features"][name] = {k: full.get(k) for k in FIGURES}
        if name == "silhouette" and args.oof_dir:
            try:
                write_oof(
                    args.oof_dir, folds_csv, rows, y, folds, probs, args.mean_with, args.silhouette_weight
                )
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        line = ", ".join(f"{k} {full[k]['auc']:.3f}" for k in FIGURES if full.get(k))
        print(f"{name} ({args.grid}x{args.grid}, l2 {args.l2}): {line}")
    out = args.out or Path(cfg.output_dir) / f"silhouette_{cfg.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
