"""K-fold cross-validation of one classification recipe over the non-test images of its manifest.

Why: a recipe judged on one validation split is judged on few images. The covid validation split holds
17 ieee8023 non-COVID images, so one run's within-collection AUC moves by about +-0.05 between seeds
and epochs. Cross-validation scores every non-test image once, with a model that never trained on it
or chose its epoch on it: about five times the images behind each figure.

What it does, all under ``<output_dir>/crossval/<run name>/`` (command: ``training/recipes/crossval.py``):

- **Pool**: every row of the recipe's manifest that is not in its test split. The test split is never
  read, so it stays untouched for the model that is finally shipped.
- **Folds**: patient-level (rows linked by patient, file bytes, picture or near-identical thumbnail stay
  together), stratified by dataset x label, seeded (``folds.csv``).
- **Fold k's run** (nested): fold k is its ``test`` split (scored out of fold), fold k+1 its
  ``validation`` split (epoch and threshold), the other folds its ``train`` split. A dataset that has
  no train rows in the recipe's manifest (e.g. OpenIST, the normal collection no covid run trains on)
  stays out of training in every fold: its rows are only ever validation or out-of-fold images. Each
  run is an ordinary ``cxr-node train`` run of the recipe with only the name and manifest changed
  (``<name>-fold<k>``); a fold whose bundle exists is not re-trained, so folds may be run by several
  processes at once.
- **Out of fold**: each fold's bundle scores its own fold through the pipeline's preprocessing
  (``oof_fold<k>.csv``: image, patient, dataset, label, score).
- **Report** (:func:`aggregate`): the pooled out-of-fold figures with bootstrap 95% CIs, per fold, and
  the mean of the folds' AUCs. Pooled AUCs rank five models' scores on one scale, so they are lower
  when the fold models are calibrated differently; the fold mean measures each model's ranking alone.
  For covid these are the figures of :mod:`training.covid_figures`.
- **Fold ensemble** (:func:`export_fold_ensemble`): the mean of the fold models as one bundle, threshold
  by Youden on the pooled out-of-fold scores (how covid 2.1.0 was made).

The pooled figures estimate the RECIPE (a single run of it on 60 % of the pool), not any one bundle:
members see less data than a run on the full train split.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bundle import input_lungs_dir, load_bundle, read_metadata
from training.cache import rows_with_input
from training.config import RunConfig, load_config
from training.covid_figures import auc_ci, selection_aucs, split_report
from training.data import collect_rows, prepare_rows
from training.distributed import DistContext
from training.ensemble import export_mean_ensemble
from training.errors import ConfigError
from training.evaluate import classification_scores, predict_lung_masks
from training.inputs import run_cache
from training.manifest import ManifestRow, write_manifest
from training.metrics import choose_threshold
from training.run import train_from_config
from training.splits import linked_groups, near_duplicate_pairs, thumbnails
from training.tasks import TASK_SPECS

log = logging.getLogger(__name__)

CLASSIFICATION_TASKS = ("covid", "projection")
OOF_COLUMNS = ("image_path", "patient_id", "dataset", "label", "score")


def cv_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "crossval" / cfg.name


def assign_folds(
    rows: Sequence[ManifestRow],
    n_folds: int,
    seed: int,
    stratum: Any,
    extra_links: Sequence[tuple[int, int]] = (),
) -> list[int]:
    """Fold index per row: linked rows share a fold; every dataset x stratum is spread evenly.

    Groups are shuffled with ``random.Random(seed)`` inside each stratum and each goes to the fold
    with the fewest images of that stratum so far (lowest index on ties), so the same rows and seed
    always give the same folds.
    """

    if n_folds < 3:
        raise ConfigError(f"need 3 or more folds (train, validation, out of fold), got {n_folds}")
    strata: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for g in linked_groups(rows, extra_links):
        members = [rows[i] for i in g]
        strata[(members[0].dataset, stratum(members))].append(g)
    rng = random.Random(seed)
    fold_of = [-1] * len(rows)
    for key in sorted(strata):
        groups = strata[key]
        rng.shuffle(groups)
        counts = [0] * n_folds
        for g in groups:
            k = min(range(n_folds), key=lambda j: (counts[j], j))
            counts[k] += len(g)
            for i in g:
                fold_of[i] = k
    return fold_of


def fold_rows(
    rows: Sequence[ManifestRow], fold_of: Sequence[int], k: int, n_folds: int, never_trained: set[str]
) -> list[ManifestRow]:
    """Fold k's manifest rows: fold k = test, fold k+1 = validation, the rest train.

    Rows of ``never_trained`` datasets that would be training rows are left out.
    """
    val = (k + 1) % n_folds
    out: list[ManifestRow] = []
    for row, f in zip(rows, fold_of, strict=True):
        split = "test" if f == k else "validation" if f == val else "train"
        if split == "train" and row.dataset in never_trained:
            continue
        r = copy.copy(row)
        r.split = split
        out.append(r)
    return out


def pool_rows(cfg: RunConfig) -> tuple[list[ManifestRow], set[str]]:
    """The non-test rows of the recipe's manifest, and the datasets it never trains on."""

    if not cfg.data.manifest:
        raise ConfigError(f"{cfg.source_file}: cross-validation needs a [data] manifest with its splits")
    spec = TASK_SPECS[cfg.task]
    rows = [r for r in collect_rows(cfg) if spec.accepts(r)]
    if not rows or not all(r.split for r in rows):
        raise ConfigError(f"{cfg.data.manifest}: every row needs a split (train/validation/test)")
    trained = {r.dataset for r in rows if r.split == "train"}
    never = {r.dataset for r in rows} - trained
    return [r for r in rows if r.split != "test"], never


def write_folds(cfg: RunConfig, n_folds: int, seed: int) -> tuple[list[ManifestRow], list[int], set[str]]:
    """Pool, fold assignment and never-trained datasets; ``folds.csv`` written once, then re-read."""

    pool, never = pool_rows(cfg)
    path = cv_dir(cfg) / "folds.csv"
    if path.is_file():
        saved = {rec["image_path"]: int(rec["fold"]) for rec in read_records(path)}
        if set(saved) != {r.image_path for r in pool} or max(saved.values()) + 1 != n_folds:
            raise ConfigError(f"{path} was written for another pool or fold count: remove it to start over")
        return pool, [saved[r.image_path] for r in pool], never
    links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(pool))] if cfg.data.near_duplicates else []
    fold_of = assign_folds(pool, n_folds, seed, TASK_SPECS[cfg.task].stratum, links)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "dataset", "patient_id", "fold"])
        for r, f in zip(pool, fold_of, strict=True):
            w.writerow([r.image_path, r.dataset, r.patient_id, f])
    return pool, fold_of, never


def fold_config(config: Path, k: int, manifest: Path, overrides: dict[str, Any]) -> RunConfig:
    """CONFIG as it is, but for the run's name and manifest (its runs live in the CV folder and share
    the recipe's image cache)."""
    base = load_config(config, overrides=overrides)
    return load_config(
        config,
        overrides={
            **overrides,
            "run.name": f"{base.name}-fold{k}",
            "run.output_dir": str(cv_dir(base)),
            "data.manifest": str(manifest.resolve()),
            "data.cache_dir": str(base.data.cache_dir or Path(base.output_dir) / "cache"),
        },
    )


def score_rows(
    cfg: RunConfig, bundle_dir: Path, rows: Sequence[ManifestRow]
) -> tuple[list[ManifestRow], np.ndarray]:
    """P(positive) of ``rows`` from the bundle, through the pipeline's preprocessing."""

    meta = read_metadata(bundle_dir)
    bundle = load_bundle(bundle_dir, cfg.task)
    cache = run_cache(cfg)
    in_spec = meta.input.to_dict()
    masks: dict[str, np.ndarray] = {}
    if in_spec["mode"] == "lungs_only":
        lungs = input_lungs_dir(bundle_dir) or (Path(cfg.lung_bundle) if cfg.lung_bundle else None)
        if lungs is not None:
            masks = predict_lung_masks(lungs, list(rows), cache)
    usable = rows_with_input(rows, in_spec, masks)
    return usable, np.asarray(classification_scores(bundle.network, usable, cache, in_spec, lung_masks=masks))


def run_fold(config: Path, k: int, n_folds: int, seed: int, overrides: dict[str, Any]) -> Path:
    """Train fold k (unless its bundle exists) and write its out-of-fold scores."""
    base = load_config(config, overrides=overrides)
    pool, fold_of, never = write_folds(base, n_folds, seed)
    manifest = cv_dir(base) / f"fold{k}.csv"
    rows = fold_rows(pool, fold_of, k, n_folds, never)
    if not manifest.is_file():
        write_manifest(rows, manifest)
    cfg = fold_config(config, k, manifest, overrides)
    bundle = cfg.run_dir / "bundles" / cfg.name
    if not (bundle / "configs" / "metadata.json").is_file():
        log.info("fold %d/%d: training %s", k, n_folds, cfg.name)
        trained = train_from_config(cfg)
        if trained is None:
            raise ConfigError(f"fold {k}: the run exported no bundle")
        bundle = trained
    spec = TASK_SPECS[cfg.task]
    oof = [r for r in rows if r.split == "test"]
    usable, scores = score_rows(cfg, bundle, oof)
    out = cv_dir(base) / f"oof_fold{k}.csv"
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(OOF_COLUMNS)
        for r, s in zip(usable, scores, strict=True):
            w.writerow([r.image_path, r.patient_id, r.dataset, spec.label_of(r), f"{float(s):.6f}"])
    log.info("fold %d: %d of %d out-of-fold images scored -> %s", k, len(usable), len(oof), out)
    return out


def read_records(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def aggregate(cfg: RunConfig, n_folds: int, n_boot: int) -> dict[str, Any]:
    """Pooled and per-fold out-of-fold figures (every fold must have been scored)."""
    records = [(k, rec) for k, recs in read_oof_folds(cfg, n_folds).items() for rec in recs]
    y = np.array([int(rec["label"]) for _, rec in records])
    s = np.array([float(rec["score"]) for _, rec in records])
    ds = np.array([rec["dataset"] for _, rec in records])
    fold = np.array([k for k, _ in records])
    threshold = choose_threshold(y, s, method="youden")
    report: dict[str, Any] = {
        "config": str(cfg.source_file),
        "folds": n_folds,
        "images": int(y.size),
        "positives": int(y.sum()),
        "pooled_threshold_youden": threshold,
    }
    if cfg.task == "covid":
        known = {r.image_path: r.findings for r in pool_rows(cfg)[0]}
        findings = [known.get(rec["image_path"], []) for _, rec in records]
        report["pooled"] = split_report(y, s, ds, threshold, n_boot, findings=findings)
        report["per_fold"] = {
            str(k): split_report(
                y[fold == k], s[fold == k], ds[fold == k], threshold, n_boot,
                findings=[f for f, kk in zip(findings, fold, strict=True) if kk == k],
            )
            for k in range(n_folds)
        }
    else:
        report["pooled"] = {"auc": auc_ci(y, s, n_boot)}
        report["per_fold"] = {
            str(k): {"auc": auc_ci(y[fold == k], s[fold == k], n_boot)} for k in range(n_folds)
        }
    # Pooling puts five models' scores on one scale, so it also charges them for disagreeing on that
    # scale (calibration); the mean of the folds' AUCs is the usual estimate of one model's ranking.
    report["fold_mean"] = {}
    for key, entry in report["pooled"].items():
        if isinstance(entry, dict) and "auc" in entry:
            values = [f[key]["auc"] for f in report["per_fold"].values() if f.get(key)]
            report["fold_mean"][key] = float(np.mean(values)) if len(values) == n_folds else None
    return report


def paired_difference(
    cfg: RunConfig, other: RunConfig, n_folds: int, n_boot: int, seed: int = 0
) -> dict[str, Any]:
    """This recipe's pooled out-of-fold AUCs minus ``other``'s on the same images, with a paired
    bootstrap 95% CI (one resample of the images, both recipes' scores kept with their image).

    The two must have been cross-validated on the same folds (same pool and fold seed).
    """

    def load(c: RunConfig) -> dict[str, dict[str, str]]:
        folds = read_oof_folds(c, n_folds)
        return {rec["image_path"]: {**rec, "fold": str(k)} for k, recs in folds.items() for rec in recs}

    mine, theirs = load(cfg), load(other)
    if set(mine) != set(theirs):
        raise ConfigError(f"{cv_dir(cfg)} and {cv_dir(other)} scored different images: not the same folds")
    paths = sorted(mine)
    y = np.array([int(mine[p]["label"]) for p in paths])
    ds = np.array([mine[p]["dataset"] for p in paths])
    fold = np.array([int(mine[p]["fold"]) for p in paths])
    a = np.array([float(mine[p]["score"]) for p in paths])
    b = np.array([float(theirs[p]["score"]) for p in paths])

    names = {"within": "within_ieee8023_auc", "vs_heldout_normals": "covid_vs_openist_auc",
             "mean": "selection_score"}

    def figures(idx: np.ndarray) -> dict[str, float] | None:
        mine_aucs = selection_aucs(a[idx], y[idx], ds[idx])
        if mine_aucs["mean"] is None:  # a resample without ieee8023 or OpenIST images of both classes
            return None
        theirs_aucs = selection_aucs(b[idx], y[idx], ds[idx])
        return {names[k]: float(mine_aucs[k]) - float(theirs_aucs[k]) for k in names}  # type: ignore[arg-type]

    point = figures(np.arange(y.size))
    if point is None:
        raise ConfigError("the pooled images lack ieee8023 or OpenIST images of both classes")
    rng = np.random.default_rng(seed)
    draws = [f for f in (figures(rng.integers(0, y.size, y.size)) for _ in range(n_boot)) if f is not None]
    per_fold = [figures(np.flatnonzero(fold == k)) for k in range(n_folds)]
    out: dict[str, Any] = {"minus": str(other.source_file), "images": int(y.size)}
    for key, value in point.items():
        lo, hi = np.quantile([d[key] for d in draws], [0.025, 0.975])
        mean = None if None in per_fold else float(np.mean([f[key] for f in per_fold]))  # type: ignore[index]
        out[key] = {"difference": value, "ci95": [float(lo), float(hi)], "fold_mean_difference": mean}
    return out


def read_oof_folds(cfg: RunConfig, n_folds: int) -> dict[int, list[dict[str, str]]]:
    root = cv_dir(cfg)
    missing = [k for k in range(n_folds) if not (root / f"oof_fold{k}.csv").is_file()]
    if missing:
        raise ConfigError(f"folds {missing} have no out-of-fold scores yet in {root}")
    return {k: read_records(root / f"oof_fold{k}.csv") for k in range(n_folds)}


def export_fold_ensemble(
    config: Path, report: dict[str, Any], name: str, version: str, overrides: dict[str, Any]
) -> Path:
    """The mean of the K fold models as one bundle (``runs/<name>``), on the recipe's own split.

    No member trained on, or chose its epoch on, the recipe's test split (the pool excludes it; checked
    here again), so the bundle's test figures are held out for every member. Its threshold is the
    Youden threshold of the pooled out-of-fold scores (``[threshold] method = "fixed"``). Its
    validation figures are NOT held out: each validation image was a training image of three members;
    ``metadata.json`` says so next to the cross-validation figures that replace them as the estimate.
    """

    base = load_config(config, overrides=overrides)
    n_folds = int(report["folds"])
    threshold = float(report["pooled_threshold_youden"])
    cfg = load_config(config, overrides={
        **overrides, "run.name": name, "run.version": version,
        "threshold.method": "fixed", "threshold.value": threshold,
    })
    spec = TASK_SPECS[cfg.task]
    rows, _path, manifest_sha = prepare_rows(cfg, spec, DistContext())
    test_images = {r.image_path for r in rows if r.split == "test"}
    members, fold_names = [], []
    root = cv_dir(base)
    for k in range(n_folds):
        fc = fold_config(config, k, root / f"fold{k}.csv", overrides)
        with (root / f"fold{k}.csv").open(encoding="utf-8") as fh:
            if test_images & {rec["image_path"] for rec in csv.DictReader(fh)}:
                raise ConfigError(f"{base.name} fold {k}'s manifest holds test images of {cfg.data.manifest}")
        members.append(load_bundle(fc.run_dir / "bundles" / fc.name, cfg.task))
        fold_names.append(fc.name)
    epochs = [int(b.metadata.metrics.get("best_epoch", -1)) for b in members]
    bundle = export_mean_ensemble(
        cfg, [b.network for b in members], [b.metadata.network_def for b in members], epochs, rows,
        manifest_sha,
    )
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    method = f"Youden on the pooled out-of-fold scores of the {len(members)} fold models (cross-validation)"
    card_path = bundle / "docs" / "README.md"  # the card names the method the exporter was given
    card_path.write_text(card_path.read_text(encoding="utf-8").replace(meta["threshold_method"], method))
    meta["threshold_method"] = method
    meta["ensemble"] = {
        "combination": "mean of the fold models' P(positive); Grad-CAM: mean of the members' maps",
        "members": [
            {"name": n, "fold": k, "best_epoch": e, "weights_sha256": b.metadata.weights.get("sha256")}
            for k, (n, e, b) in enumerate(zip(fold_names, epochs, members, strict=True))
        ],
    }
    meta["crossval"] = {
        "folds": n_folds,
        "config": str(config),
        "threshold": f"Youden on the pooled out-of-fold scores of the {len(members)} fold models: "
        f"{threshold:.4f}",
        "validation_metrics_in_sample": "every validation image was a training image of some members: the "
        "out-of-fold figures below, not metrics.validation, estimate the recipe",
        "pooled": report["pooled"],
        "fold_mean": report["fold_mean"],
    }
    meta_path.write_text(json.dumps(meta, indent=2, default=float) + "\n", encoding="utf-8")
    return bundle


def _fmt(e: dict | None) -> str:
    if not e:
        return "n/a"
    return f"{e['auc']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] ({e['positives']}/{e['n']})"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Cross-validation of `{report['config']}` ({report['folds']} folds, out-of-fold)",
        "",
        f"{report['images']} images, {report['positives']} positive; pooled Youden threshold "
        f"{report['pooled_threshold_youden']:.3f}. AUC [bootstrap 95% CI] (positives/images).",
        "",
    ]
    keys = [k for k, v in report["pooled"].items() if isinstance(v, dict) and "auc" in v]
    folds = report["per_fold"]
    lines += ["| figure | pooled | mean of folds | " + " | ".join(f"fold {k}" for k in folds) + " |"]
    lines += ["|---|---|---|" + "---|" * len(folds)]
    for key in keys:
        mean = report["fold_mean"].get(key)
        cells = [_fmt(report["pooled"].get(key)), "n/a" if mean is None else f"{mean:.3f}"]
        cells += [_fmt(f.get(key)) for f in folds.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if "selection_score" in report["pooled"]:
        per = [f.get("selection_score") for f in folds.values()]
        sel = [report["pooled"]["selection_score"], None if None in per else float(np.mean(per)), *per]
        lines.append("| selection_score (mean of within-ieee8023 and vs OpenIST) | "
                     + " | ".join("n/a" if v is None else f"{v:.3f}" for v in sel) + " |")
    by = report["pooled"].get("within_ieee8023_by_finding")
    if by:
        lines += ["", "Pooled ieee8023 COVID-19 vs each kind of ieee8023 negative (first finding): "
                  + "; ".join(f"{kind} (n={e['n']}) " + ("n/a" if e["auc"] is None else f"{e['auc']:.3f}")
                              for kind, e in by.items())]
    paired = report.get("paired")
    if paired:
        lines += ["", f"Minus `{paired['minus']}` on the same {paired['images']} images "
                  "(paired bootstrap 95% CI):", ""]
        for key, e in paired.items():
            if isinstance(e, dict):
                mean = e.get("fold_mean_difference")
                lo, hi = e["ci95"]
                lines.append(f"- {key}: pooled {e['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                             + ("" if mean is None else f"; mean of the folds' differences {mean:+.3f}"))
    return "\n".join(lines) + "\n"


