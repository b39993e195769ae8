"""K-fold cross-validation of one classification recipe over the non-test images of its manifest.

    .venv/bin/python -m training.recipes.crossval CONFIG [--folds 5] [--fold-seed 0] \
        [--only K ...] [--aggregate] [--with-runs NAME ...] [--export-ensemble NAME VERSION] \
        [--set SECTION.KEY=VALUE ...]

Why: a recipe judged on one validation split is judged on few images. The covid validation split holds
17 ieee8023 non-COVID images, so one run's within-collection AUC moves by about +-0.05 between seeds
and epochs, and no candidate could be told from another (issue 6, sessions 2-5). Cross-validation
scores every non-test image once, with a model that never trained on it or chose its epoch on it:
about five times the images behind each figure.

What it does, all under ``<output_dir>/crossval/<run name>/``:

- **Pool**: every row of CONFIG's manifest that is not in its test split. The test split is never read,
  so it stays untouched for the model that is finally shipped.
- **Folds**: patient-level (rows linked by patient, file bytes, picture or near-identical thumbnail stay
  together), stratified by dataset x label, seeded (``folds.csv``).
- **Fold k's run** (nested): fold k is its ``test`` split (scored out of fold), fold k+1 its
  ``validation`` split (epoch and threshold), the other folds its ``train`` split. A dataset that has
  no train rows in CONFIG's manifest (e.g. OpenIST, the normal collection no covid run trains on) stays
  out of training in every fold: its rows are only ever validation or out-of-fold images. Each run is
  an ordinary ``cxr-node train`` run of CONFIG with only the name and manifest changed
  (``<name>-fold<k>``); a fold whose bundle exists is not re-trained, so folds may be run by several
  processes at once (``--only``).
- **Out of fold**: each fold's bundle scores its own fold through the pipeline's preprocessing
  (``oof_fold<k>.csv``: image, patient, dataset, label, score).
- **Report** (``--aggregate``, once every fold is scored): ``report.json`` / ``report.md``: the pooled
  out-of-fold figures with bootstrap 95% CIs, per fold, and the mean of the folds' AUCs. Pooled AUCs rank
  five models' scores on one scale, so they are lower when the fold models are calibrated differently;
  the fold mean measures each model's ranking alone. For covid these are the figures of
  ``training.recipes.covid_compare`` (within-ieee8023 AUC, ieee8023 COVID-19 vs OpenIST normals AUC,
  their mean = the trainer's selection score, ieee8023 + NIH AUC, source index, per source).

The pooled figures estimate the RECIPE (a single run of it on 60 % of the pool), not any one bundle:
members see less data than a run on the full train split. The folds' bundles are ordinary bundles; the
pooled threshold (Youden on the pooled out-of-fold scores) is reported, not written into them.

Session-6 covid findings and the rule for the next covid candidate. Cross-validated so far (5 folds,
fold seed 0): the 2.0.0 recipe C (``covid_ms_equalize_w32.toml``), the same cut with lungs 1.3.0 masks
(``covid_ms_equalize_w32_l13.toml``: the ship rule in its header; not shipped) and the session-2 candidate
B (``covid_ms_equalize.toml``, w16 / 128 px), which ranked better than C: mean of the folds' within-ieee8023
AUC 0.701 vs 0.636; paired pooled selection-score difference +0.114 [+0.070, +0.163]. B was cross-validated
after its session-2 test figures had been read, so, to choose without that knowledge, the rule below ranks
ALL FIVE session-2 candidates (A ``covid_ms_zscore``, B, C, D ``covid_ms_equalize_lr``, E
``covid_ms_equalize_lr_classbal``) on cross-validation alone. It was written and committed before A, D and E
were cross-validated:

- the candidate recipe is the one with the highest mean of the folds' selection scores (the trainer's
  mean of within-ieee8023 AUC and ieee8023 COVID-19 vs OpenIST AUC);
- it ships as covid 2.1.0 only if (1) it is not C, (2) its paired pooled selection-score difference to C
  has a 95% CI above 0 and its mean per-fold within-ieee8023 difference to C is above 0, and (3) the
  shipped model is the mean ensemble of its five fold models (none re-trained or dropped), threshold by
  Youden on the pooled out-of-fold scores. Its test figures are read only after that decision. (When this
  was written, no code exported a fold ensemble: ``training.recipes.ensemble`` requires members that share
  their validation split. ``--export-ensemble`` does it now.)

OUTCOME (session 6; mean of the folds' selection scores): A 0.805, B 0.791, l13 0.743, C 0.734, E 0.728,
D 0.723. A (``covid_ms_zscore.toml``: ResNet18 width 16, 128 px, z-score in the lungs) is chosen; against C
its paired pooled selection difference is +0.138 [+0.093, +0.188] and its mean per-fold within-ieee8023
difference +0.065. It ships as covid 2.1.0, the mean of its five fold models. ``--export-ensemble`` was
written while A's folds trained (A's report came in before it was finished); it implements condition (3)
as worded and makes no choice of its own.

Session 7: how much a recipe's figures move between two cross-validations of itself. A re-run of A (same
folds and seeds, one torch thread per run instead of the default) gave a mean-of-folds selection score of
0.785 (session 6: 0.805) and within-ieee8023 0.674 (0.701). Differences between recipes below about 0.03
are therefore run-to-run noise, and the session-7 candidates had to beat A's re-run by 0.03. Neither did:
A at 96 px (``covid_ms_zscore_96.toml``) 0.770, A with left-right mirroring (``covid_ms_zscore_hflip.toml``)
0.793; outcomes in their headers.

Session 8: a third cross-validation of A gave 0.782 (within-ieee8023 0.654): three runs of one recipe span
0.782-0.805 (within 0.654-0.701). The report now also carries, for covid, the figures that need the
findings (``training.recipes.covid_compare.finding_figures``): A's COVID-19 scores rank the collection's own
"No Finding" pictures at chance (0.450 pooled) and NIH "Pneumonia" barely above NIH "No Finding" (0.561),
so inside one collection the score sees little of the lungs. The candidate A + a training-only "any finding"
head (``covid_ms_zscore_findaux.toml``, rule in its header) scored 0.790 (within 0.677): not shipped.
A drawn so that the licence (ieee8023's sub-collection trace) does not predict the label
(``covid_ms_zscore_licbal.toml``) scored 0.746 (within 0.613): not shipped.

Session 9: a fourth cross-validation of A gave 0.777 (within-ieee8023 0.659); four runs span 0.777-0.805
(within 0.654-0.701). A started from SimSiam weights learnt without labels on the non-test pictures
(``training/recipes/pretrain_simsiam.py``, ``covid_ms_zscore_simsiam.toml``, rule in its header) scored 0.764
(within 0.644; paired pooled selection -0.038 [-0.073, -0.006] against A's session-9 run): not shipped.
A with non-lung pixels at -3 (``covid_ms_zscore_outside.toml``) 0.772 (within 0.656): not shipped. The mean of
A's probability and a linear model of the lung silhouette (``training/recipes/silhouette_check.py``, whose
``--oof-dir`` writes out-of-fold files that ``--aggregate`` reads; ``covid_ms_zscore_plus_silhouette.toml``)
0.797 (within 0.691; paired +0.015 [-0.007, +0.035]): not shipped. With the CNN half the mean of three seeds
of A per fold (``covid_ms_zscore_x3_plus_silhouette.toml``): 0.812 (within 0.696; paired +0.035 [+0.007,
+0.062]): not shipped; the three-seed mean alone gave 0.814 (within 0.681). Runs of A with two other seeds:
0.794 and 0.778. ``--with-runs`` reports such a mean of seeds directly and exports all their fold models.
The confirmation on three fresh seeds (``covid_ms_zscore_seeds_confirm.toml``, rule in its header) did not
replicate it: paired pooled selection -0.004 [-0.039, +0.029], within 0.651; not shipped.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.config import RunConfig, load_config
from training.errors import ConfigError, TrainingError
from training.manifest import ManifestRow, write_manifest

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
    from training.splits import linked_groups

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
    from training.data import collect_rows
    from training.tasks import TASK_SPECS

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
    from training.splits import near_duplicate_pairs, thumbnails
    from training.tasks import TASK_SPECS

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
    from pipelines.bundle import input_lungs_dir, load_bundle, read_metadata
    from training.cache import ArrayCache, rows_with_input
    from training.evaluate import classification_scores, predict_lung_masks

    meta = read_metadata(bundle_dir)
    bundle = load_bundle(bundle_dir, cfg.task)
    cache = ArrayCache(cfg.data.cache_dir or Path(cfg.output_dir) / "cache")
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
    from training.run import train_from_config
    from training.tasks import TASK_SPECS

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


def aggregate(
    cfg: RunConfig, n_folds: int, n_boot: int, with_runs: Sequence[RunConfig] = ()
) -> dict[str, Any]:
    """Pooled and per-fold out-of-fold figures (every fold must have been scored).

    ``with_runs``: other cross-validations of the recipe on the same folds (other seeds); each image's
    score is then the mean of all the runs' probabilities, as in their mean-ensemble bundle.
    """
    from training.metrics import choose_threshold
    from training.recipes.covid_compare import auc_ci, split_report

    records = [(k, rec) for k, recs in read_oof_mean([cfg, *with_runs], n_folds).items() for rec in recs]
    y = np.array([int(rec["label"]) for _, rec in records])
    s = np.array([float(rec["score"]) for _, rec in records])
    ds = np.array([rec["dataset"] for _, rec in records])
    fold = np.array([k for k, _ in records])
    threshold = choose_threshold(y, s, method="youden")
    report: dict[str, Any] = {
        "config": str(cfg.source_file),
        "runs": [c.name for c in (cfg, *with_runs)],
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
    cfg: RunConfig, other: RunConfig, n_folds: int, n_boot: int, seed: int = 0,
    with_runs: Sequence[RunConfig] = (),
) -> dict[str, Any]:
    """This recipe's pooled out-of-fold AUCs minus ``other``'s on the same images, with a paired
    bootstrap 95% CI (one resample of the images, both recipes' scores kept with their image).

    The two must have been cross-validated on the same folds (same pool and fold seed).
    """
    from training.trainers.covid import selection_aucs

    def load(cs: Sequence[RunConfig]) -> dict[str, dict[str, str]]:
        folds = read_oof_mean(cs, n_folds)
        return {rec["image_path"]: {**rec, "fold": str(k)} for k, recs in folds.items() for rec in recs}

    mine, theirs = load([cfg, *with_runs]), load([other])
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


def read_oof_mean(cfgs: Sequence[RunConfig], n_folds: int) -> dict[int, list[dict[str, str]]]:
    """``read_oof_folds`` of the first run, each score replaced by the mean over all the runs."""
    runs = [read_oof_folds(c, n_folds) for c in cfgs]
    if len(runs) == 1:
        return runs[0]
    out: dict[int, list[dict[str, str]]] = {}
    for k, recs in runs[0].items():
        per_run = [{rec["image_path"]: float(rec["score"]) for rec in r[k]} for r in runs]
        if any(set(p) != set(per_run[0]) for p in per_run):
            names = [c.name for c in cfgs]
            raise ConfigError(f"fold {k}: {names} scored different images: not the same folds")
        out[k] = [{**rec, "score": f"{np.mean([p[rec['image_path']] for p in per_run]):.6f}"} for rec in recs]
    return out


def export_fold_ensemble(
    config: Path, report: dict[str, Any], name: str, version: str, overrides: dict[str, Any],
    with_runs: Sequence[str] = (),
) -> Path:
    """The mean of the K fold models as one bundle (``runs/<name>``), on the recipe's own split.

    ``with_runs`` (names of other cross-validations of CONFIG on the same folds, e.g. other seeds): their
    fold models are members too, and ``report`` must be the pooled report of all the runs' mean.

    No member trained on, or chose its epoch on, the recipe's test split (the pool excludes it; checked
    here again), so the bundle's test figures are held out for every member. Its threshold is the
    Youden threshold of the pooled out-of-fold scores (``[threshold] method = "fixed"``). Its
    validation figures are NOT held out: each validation image was a training image of three members;
    ``metadata.json`` says so next to the cross-validation figures that replace them as the estimate.
    """
    from pipelines.bundle import load_bundle
    from training.data import prepare_rows
    from training.distributed import DistContext
    from training.recipes.ensemble import export_mean_ensemble
    from training.tasks import TASK_SPECS

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
    members, fold_names, fold_index = [], [], []
    for run in [base.name, *with_runs]:
        run_overrides = {**overrides, "run.name": run}
        root = cv_dir(load_config(config, overrides=run_overrides))
        for k in range(n_folds):
            fc = fold_config(config, k, root / f"fold{k}.csv", run_overrides)
            with (root / f"fold{k}.csv").open(encoding="utf-8") as fh:
                if test_images & {rec["image_path"] for rec in csv.DictReader(fh)}:
                    raise ConfigError(f"{run} fold {k}'s manifest holds test images of {cfg.data.manifest}")
            members.append(load_bundle(fc.run_dir / "bundles" / fc.name, cfg.task))
            fold_names.append(fc.name)
            fold_index.append(k)
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
            for k, n, e, b in zip(fold_index, fold_names, epochs, members, strict=True)
        ],
    }
    meta["crossval"] = {
        "folds": n_folds,
        "config": str(config),
        "threshold": f"Youden on the pooled out-of-fold scores of the {len(members)} fold models: "
        f"{threshold:.4f}",
        "runs": [base.name, *with_runs],
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


def main(argv: list[str] | None = None) -> int:
    from training.run import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    ap.add_argument("--only", type=int, action="append", default=[], help="run only fold K (repeatable)")
    ap.add_argument("--aggregate", action="store_true", help="only pool the scored folds into the report")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--export-ensemble", nargs=2, metavar=("NAME", "VERSION"),
                    help="after the report: export the mean of the fold models as one bundle (runs/NAME)")
    ap.add_argument("--against", type=Path, help="another covid recipe cross-validated on the same folds: "
                    "report this one's AUCs minus that one's, with a paired bootstrap CI")
    ap.add_argument("--with-runs", nargs="+", default=[], metavar="NAME",
                    help="other cross-validations of CONFIG on the same folds (e.g. --set run.seed=S --set "
                    "run.name=NAME): report the mean of all the runs (runs/crossval/<name>+<N>) and export "
                    "every run's fold models")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
        cfg = load_config(args.config, overrides=overrides)
        if cfg.task not in CLASSIFICATION_TASKS:
            raise ConfigError(f"cross-validation is for the tasks {CLASSIFICATION_TASKS}, not {cfg.task}")
        if not args.aggregate:
            for k in args.only or range(args.folds):
                if not 0 <= k < args.folds:
                    raise ConfigError(f"--only {k}: folds are 0..{args.folds - 1}")
                run_fold(args.config, k, args.folds, args.fold_seed, overrides)
            if args.only:
                return 0
        with_runs = [load_config(args.config, overrides={**overrides, "run.name": n}) for n in args.with_runs]
        report = aggregate(cfg, args.folds, args.n_boot, with_runs)
        if args.against:
            if cfg.task != "covid":
                raise ConfigError("--against compares covid figures")
            report["paired"] = paired_difference(
                cfg, load_config(args.against), args.folds, args.n_boot, with_runs=with_runs
            )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = cv_dir(cfg) if not args.with_runs else cv_dir(cfg).parent / f"{cfg.name}+{len(args.with_runs)}"
    root.mkdir(parents=True, exist_ok=True)
    if args.export_ensemble:
        try:
            bundle = export_fold_ensemble(
                args.config, report, *args.export_ensemble, overrides, with_runs=args.with_runs
            )
        except (TrainingError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"bundle: {bundle}")
    (root / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    md = markdown(report)
    (root / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
