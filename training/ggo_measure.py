"""What the two GGO decision recipes share: the images, their cached measurements, the statistics.

``training.recipes.ggo_decision`` (the shipped "GGO present" rule) and ``training.recipes.ggo_head`` (the
check a learned head must pass) read the same images through the same pipeline models and choose and report
an operating point the same way. Keeping that here means both answer for one set of images, one split rule and
one definition of "reported on <= 10 % of every collection's normals".

- images: the GGO manifest, its held-out list, and the normal patients of NIH "No Finding", OpenIST and
  Kermany children that neither GGO manifest uses, split by patient with the GGO seed (:func:`image_rows`);
- splits: which rows may speak for a split once the segmentation model's own training rows are left out
  (:func:`usable`);
- measurements: a JSON line per image, appended as it is measured and reused on the next run
  (:func:`read_cache`, :func:`append_records`), by the bundles loaded as the pipeline loads them
  (:func:`load_ggo_models`);
- statistics: the operating point (:func:`lowest_threshold`), a Newton logistic fit, the AUC, Wilson and
  bootstrap intervals in the rounded form the reports print.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.bundle import load_bundle
from pipelines.tasks.ggo import GgoDetector, GgoSegmenter
from pipelines.tasks.lungs import LungSegmenter
from training.datasets import scan_dataset
from training.manifest import ManifestRow, read_manifest
from training.metrics import mean_ci, wilson_ci
from training.splits import assign_splits

REPO = Path(__file__).resolve().parents[1]
SEED = 20260101  # the GGO manifests' seed (training.recipes.ggo_manifest), so extra patients split alike
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
BOX_FLOOR = 0.01  # the decision rule's low detector confidence floor
MAX_NORMAL_SHARE = 0.10

LogisticModel = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(mean, scale, weights with the intercept first): the standardisation travels with the weights."""


# ----------------------------------------------------------------------------------------- the images
def recipe_arguments(description: str, name: str) -> argparse.ArgumentParser:
    """The flags both recipes take; the cache and the report live under ``runs/<name>/``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--manifest", type=Path, default=REPO / "runs" / "manifests" / "ggo_neg100_ieee.csv")
    ap.add_argument("--seen", type=Path, default=REPO / "runs" / "manifests" / "ggo_with_normals15.csv",
                    help="the GGO segmentation's training manifest (to leave out what it trained on)")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--features", type=Path, default=REPO / "runs" / name / "features.jsonl")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / name / "report.json")
    return ap


def split_patients(records: Sequence[ManifestRow]) -> None:
    """Deal records (in place) to train / validation / test by patient, as the GGO manifests do."""
    assign_splits(records, fractions=SPLIT_FRACTIONS, seed=SEED, stratum=lambda rs: "none")


def image_row(r: ManifestRow, *, split: str, origin: str, ggo_mask: str, seen_split: str) -> dict[str, Any]:
    """One image as the recipes carry it (and as the cache stores it, measurements added)."""
    return {"path": r.image_path, "dataset": r.dataset, "patient_id": r.patient_id, "split": split,
            "origin": origin, "covid": r.covid, "ggo_mask": ggo_mask, "seen_split": seen_split}


def seen_splits(seen: Path | None) -> dict[str, str]:
    """Patient -> split in the segmentation's training manifest ``seen`` (empty when it names no file)."""
    return {r.patient_id: r.split for r in read_manifest(seen)} if seen and seen.is_file() else {}


def image_rows(data_root: Path, manifest: Path, seen: Path | None) -> list[dict[str, Any]]:
    """Rows to measure: the manifest, its held-out list, and the unused normal patients (own split).

    ``seen`` (when it names a file) marks each patient with its split in the segmentation's training manifest.
    """
    rows = read_manifest(manifest)
    held_path = manifest.with_name(manifest.stem + "_heldout.csv")
    held = read_manifest(held_path) if held_path.is_file() else []
    seen_split = seen_splits(seen)
    used = {r.patient_id for r in rows + held}
    extra = []
    for adapter, folder, keep in (
        ("shared_openist", "openist_normal_lungmask", lambda r: True),
        ("shared_nih_talo", "nih_cxr14_talo", lambda r: not r.findings),
        ("shared_kermany_v7", "kermany_pediatric_v7", lambda r: r.findings in ([], ["No Finding"])),
    ):
        one_per_patient: dict[str, Any] = {}
        for r in sorted(scan_dataset(adapter, data_root / folder), key=lambda r: r.image_path):
            if keep(r) and r.projection != "lateral" and r.patient_id not in used:
                one_per_patient.setdefault(r.patient_id, r)
        extra += list(one_per_patient.values())
    split_patients(extra)
    return [image_row(r, split=r.split, origin=origin, ggo_mask=r.ggo_mask,
                      seen_split=seen_split.get(r.patient_id, ""))
            for origin, group in (("manifest", rows), ("heldout", held), ("extra", extra)) for r in group]


def usable(recs: list[dict], split: str) -> list[dict]:
    """Rows of a split that can speak for it: the segmentation model's training rows are left out of
    validation, and its training and validation rows (which chose its epoch) out of test."""
    barred = {"train": (), "validation": ("train",), "test": ("train", "validation")}[split]
    return [r for r in recs if r["split"] == split and r["seen_split"] not in barred]


# ------------------------------------------------------------------------------------ the measurement
def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The records measured so far, by image path (measuring a picture takes seconds; reading it, none)."""
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            done[rec["path"]] = rec
    return done


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append measured records to the cache at once, so that an interrupted run loses one batch at most."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


@dataclass(frozen=True)
class GgoModels:
    """The bundles behind the GGO decision, as the pipeline runs them."""

    lungs: LungSegmenter
    detector: GgoDetector
    segmenter: GgoSegmenter


def load_lungs(models: Path) -> LungSegmenter:
    """The lungs bundle; one torch thread (the machine is shared, and the figures do not depend on it)."""
    torch.set_num_threads(1)
    return LungSegmenter(load_bundle(models / "lungs", "lungs"))


def load_ggo_models(models: Path) -> GgoModels:
    """Lungs, GGO detector and GGO segmentation from a models folder (ultralytics' state under runs/)."""
    return GgoModels(
        lungs=load_lungs(models),
        detector=GgoDetector(load_bundle(models / "ggo_detection", "ggo_detection",
                                         state_dir=REPO / "runs" / "ultralytics")),
        segmenter=GgoSegmenter(load_bundle(models / "ggo_segmentation", "ggo_segmentation")))


# ------------------------------------------------------------------------------------------ statistics
def normal_scores(recs: Sequence[dict], scores: Sequence[float]) -> defaultdict[str, list[float]]:
    """The normal adults' scores (``scores[i]`` is ``recs[i]``'s) per collection, what
    :func:`lowest_threshold` is set on; a collection without normals reads as an empty list."""
    out: defaultdict[str, list[float]] = defaultdict(list)
    for r, s in zip(recs, scores, strict=True):
        if r["kind"] == "normal_adult":
            out[r["dataset"]].append(s)
    return out


def lowest_threshold(normal_scores: dict[str, list[float]], max_share: float = MAX_NORMAL_SHARE) -> float:
    """The lowest score threshold at which every collection's normals are called present on <= max_share.

    Per collection with n normals at most k = floor(max_share * n) may score at or above it; the threshold
    lies midway between that collection's (k+1)-th highest score and its k-th (just above the highest when
    k = 0), and the binding collection sets it.
    """
    best = 0.0
    for scores in normal_scores.values():
        s = sorted(scores, reverse=True)
        k = int(np.floor(max_share * len(s) + 1e-9))
        if k >= len(s):
            continue
        if k > 0 and s[k - 1] > s[k]:
            best = max(best, (s[k] + s[k - 1]) / 2.0)
        else:
            best = max(best, float(np.nextafter(s[k], 2.0)))
    return float(best)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, penalty: float, steps: int, balanced: bool = False
                 ) -> LogisticModel:
    """(mean, scale, weights with the intercept first) of an L2-penalised logistic regression on
    standardised x, by Newton steps (no scikit-learn: a few features, a few hundred images).

    ``penalty`` is added to the Hessian's diagonal (intercept unpenalised); ``balanced`` weighs each class
    to half the loss, so that a few hundred normals do not drown a few dozen GGO images.
    """
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    reg = np.diag([0.0] + [penalty] * (z.shape[1] - 1))
    sw = (np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9)) if balanced
          else np.ones(len(y)))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (sw * (p - y)) + reg @ w
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, w


def logistic_score(model: LogisticModel, x: np.ndarray) -> np.ndarray:
    """P(positive) of a :func:`fit_logistic` model for the rows of x."""
    mean, scale, w = model
    return 1.0 / (1.0 + np.exp(-(w[0] + ((x - mean) / scale) @ w[1:])))


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a positive scores above a negative), ties 1/2; NaN when a side is empty.

    Not ``training.metrics.roc_auc``: that one raises without both classes (a report row here may have no
    ieee8023 negatives in a split) and, summing ranks, differs from this pairwise count in the last bit.
    """
    if not pos or not neg:
        return float("nan")
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def wilson(k: int, n: int) -> list[float]:
    """Wilson 95 % interval of k / n (``training.metrics.wilson_ci``) clipped to [0, 1] and rounded to three
    places as the reports print it; NaN bounds for n = 0."""
    ci = wilson_ci(k, n)
    if ci is None:
        return [float("nan"), float("nan")]
    return [round(max(0.0, ci[0]), 3), round(min(1.0, ci[1]), 3)]


def bootstrap_mean(values: list[float], n_boot: int = 2000, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of the mean, resampling images (``training.metrics.mean_ci``), rounded to
    three places; None for fewer than two values (one image has no spread to resample)."""
    if len(values) < 2:
        return None
    _, low, high = mean_ci(values, n_boot=n_boot, seed=seed)
    return [round(low, 3), round(high, 3)]
