"""The image-level GGO decision ("GGO present", ``pipelines/tasks/ggo_decision.py``): fit, choose, report.

    .venv/bin/python -m training.recipes.ggo_decision [--data-root ../shared/data] \
        [--manifest runs/manifests/ggo_neg100_ieee.csv] [--seen runs/manifests/ggo_with_normals15.csv] \
        [--features runs/ggo_decision/features.jsonl] [--out runs/ggo_decision/report.json] [--write-metadata]

Manifests first: ``training.recipes.ggo_manifest --per-source 15 --name ggo_with_normals15.csv`` (the GGO
segmentation's own training manifest, to know which normals it saw) and ``--per-source 100 --heldout 40
--ieee-normals --name ggo_neg100_ieee.csv`` (the GeneralBlockchain split 65/14/14 shared by both GGO models,
normal adults of three collections, and a held-out list). The normal patients of NIH "No Finding", OpenIST
and Kermany children that neither manifest uses get their own patient-level split (``assign_splits``, same
fractions and seed): more normals per collection for the operating point and for the test figures.

Every image goes through the pipeline's own code once (lungs bundle -> ``LungSegmenter``; GGO detector at
the rule's low confidence floor; GGO segmentation) and its features, the extent at a grid of pixel
thresholds (mask restricted to the lungs) and, for the radiologist-labelled images, Dice and the true
extent are appended to ``--features`` (a JSON line per image, reused on the next run).

Rule, fixed before any figure was read:
- candidates: logistic regressions (scikit-free: Newton steps, L2 1e-2, standardised features) FITTED ON
  THE TRAIN SPLIT over :data:`CANDIDATES`;
- operating point, on VALIDATION only: the lowest score threshold at which GGO is reported on <= 10 % of the
  normal adults of EVERY collection (NIH "No Finding", OpenIST, ieee8023 "No Finding"; children reported
  separately, never chosen on); images the segmentation model trained on are left out (and of test, also
  those that chose its epoch);
- candidate: the one with the most validation GGO images reported at its operating point (ties: fewer
  features, then higher validation AUC); a fit with a coefficient <= 0 is refused (a score that falls as
  the models' GGO evidence rises explains nothing to a reader);
- mask threshold: on the validation GGO images, the pixel threshold in 0.30..0.90 with
  the smallest mean absolute extent error against the radiologists' masks (extent = % of the pipeline's
  lung mask).
The test split and the held-out list are read only to report (per collection, Wilson 95 % CIs).
``--write-metadata`` stores the rule as ``ggo_decision`` in the GGO segmentation bundle's metadata.json
(its weights and their sha256 untouched).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEED = 20260101
BOX_FLOOR = 0.01
MASK_THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(13))
MAX_NORMAL_SHARE = 0.10
ADULT_NORMALS = ("nih_cxr14", "openist", "ieee8023")
CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("max_box_confidence",),
    ("lung_probability_mean",),
    ("lung_probability_p90",),
    ("max_box_confidence", "lung_probability_mean"),
    ("max_box_confidence", "lung_probability_p90"),
    ("max_box_confidence", "lung_probability_mean", "lung_share_above_half"),
)


# ----------------------------------------------------------------------------------------- the images
def image_rows(data_root: Path, manifest: Path, seen: Path | None) -> list[dict[str, Any]]:
    """Rows to measure: the manifest, its held-out list, and the unused normal patients (own split)."""
    from training.datasets import scan_dataset
    from training.manifest import read_manifest
    from training.splits import assign_splits

    rows = read_manifest(manifest)
    held_path = manifest.with_name(manifest.stem + "_heldout.csv")
    held = read_manifest(held_path) if held_path.is_file() else []
    seen_split = {r.patient_id: r.split for r in read_manifest(seen)} if seen else {}
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
    assign_splits(extra, fractions=(0.7, 0.15, 0.15), seed=SEED, stratum=lambda rs: "none")
    out = []
    for origin, group in (("manifest", rows), ("heldout", held), ("extra", extra)):
        for r in group:
            out.append({"path": r.image_path, "dataset": r.dataset, "patient_id": r.patient_id,
                        "split": r.split, "origin": origin, "covid": r.covid, "ggo_mask": r.ggo_mask,
                        "seen_split": seen_split.get(r.patient_id, "")})
    return out


def kind(row: dict[str, Any]) -> str:
    """ggo (radiologist GGO mask with foreground), normal_adult, child, covid (ieee8023 COVID-19, no mask)."""
    if row.get("has_truth"):
        return "ggo"
    if row["dataset"] == "kermany_pediatric":
        return "child"
    if row["covid"] == "1":
        return "covid"
    return "normal_adult"


# ------------------------------------------------------------------------------------ the measurement
def measure(rows: list[dict[str, Any]], features_path: Path, models: Path, batch: int = 8) -> list[dict]:
    """Run the pipeline's models on every row not yet in ``features_path``; return all measured rows."""
    import torch

    from pipelines.bundle import load_bundle
    from pipelines.image import load_image
    from pipelines.tasks.ggo import GgoDetector, GgoSegmenter
    from pipelines.tasks.lungs import LungSegmenter
    from training.cache import load_mask

    torch.set_num_threads(1)
    done: dict[str, dict] = {}
    if features_path.is_file():
        for line in features_path.read_text().splitlines():
            rec = json.loads(line)
            done[rec["path"]] = rec
    todo = [r for r in rows if r["path"] not in done]
    if todo:
        lungs = LungSegmenter(load_bundle(models / "lungs", "lungs"))
        det = GgoDetector(load_bundle(models / "ggo_detection", "ggo_detection",
                                      state_dir=REPO / "runs" / "ultralytics"))
        seg = GgoSegmenter(load_bundle(models / "ggo_segmentation", "ggo_segmentation"))
        features_path.parent.mkdir(parents=True, exist_ok=True)
        with features_path.open("a") as fh:
            for start in range(0, len(todo), batch):
                part = todo[start:start + batch]
                images = [load_image(r["path"]) for r in part]
                lung_masks = [lr.mask for lr in lungs.predict(images)]
                boxes = det.predict(images, min_confidence=BOX_FLOOR)
                maps = seg.predict(images, lung_masks)
                for r, im, lung, bx, (_, prob) in zip(part, images, lung_masks, boxes, maps, strict=True):
                    truth = load_mask(r["ggo_mask"], im.pixels.shape) if r["ggo_mask"] else None
                    rec = {**r, **_record(bx, prob, lung, truth, det.threshold, seg.threshold)}
                    done[r["path"]] = rec
                    fh.write(json.dumps(rec) + "\n")
                fh.flush()
                print(f"measured {start + len(part)}/{len(todo)}", file=sys.stderr, flush=True)
    return [done[r["path"]] | {"split": r["split"], "origin": r["origin"], "seen_split": r["seen_split"]}
            for r in rows]


def _record(boxes: list, prob: np.ndarray, lung: np.ndarray, truth: np.ndarray | None, box_threshold: float,
            mask_threshold: float) -> dict[str, Any]:
    """One image's decision features, extent per pixel threshold (inside the lungs) and, with a
    radiologist mask, its true extent and Dice per threshold."""
    from pipelines.tasks.ggo_decision import decision_features
    from training.metrics import dice_iou

    lung_px = int(lung.sum())

    def share(mask: np.ndarray) -> float:
        return 100.0 * float((mask & lung).sum()) / lung_px if lung_px else 0.0

    rec: dict[str, Any] = {
        "features": decision_features(boxes, prob, lung).to_json(),
        "boxes_at_operating": sum(b.confidence >= box_threshold for b in boxes),
        "lung_px": lung_px,
        "extent": {str(t): share(prob >= t) for t in MASK_THRESHOLDS},
        "has_truth": bool(truth is not None and truth.any()),
    }
    if truth is not None and rec["has_truth"]:
        rec["true_extent"] = share(truth)
        rec["dice"] = {str(t): dice_iou((prob >= t) & lung, truth)[0] for t in MASK_THRESHOLDS}
        rec["dice_unrestricted_bundle"] = dice_iou(prob >= mask_threshold, truth)[0]
    return rec


def measure_covid(rows: list[dict[str, Any]], covid_path: Path, models: Path, batch: int = 8
                  ) -> dict[str, float]:
    """P(COVID-19) per image as the pipeline computes it (its own input lungs when the bundle carries
    them), cached in ``covid_path``; for the report and as a candidate the rule may refuse."""
    import torch

    from pipelines.bundle import load_bundle
    from pipelines.image import load_image
    from pipelines.tasks.covid import CovidClassifier
    from pipelines.tasks.lungs import LungSegmenter

    torch.set_num_threads(1)
    done: dict[str, float] = {}
    if covid_path.is_file():
        for line in covid_path.read_text().splitlines():
            rec = json.loads(line)
            done[rec["path"]] = rec["covid_probability"]
    todo = [r for r in rows if r["path"] not in done]
    if todo:
        covid = CovidClassifier(load_bundle(models / "covid", "covid"))
        lungs = covid.input_lungs or LungSegmenter(load_bundle(models / "lungs", "lungs"))
        with covid_path.open("a") as fh:
            for start in range(0, len(todo), batch):
                part = todo[start:start + batch]
                images = [load_image(r["path"]) for r in part]
                masks = [lr.mask for lr in lungs.predict(images)]
                keep = [i for i, m in enumerate(masks) if m.any() or not covid.needs_lungs]
                results = covid.predict([images[i] for i in keep], [masks[i] for i in keep])
                for i, res in zip(keep, results, strict=True):
                    done[part[i]["path"]] = res.probability
                    record = {"path": part[i]["path"], "covid_probability": res.probability}
                    fh.write(json.dumps(record) + "\n")
                fh.flush()
                print(f"covid {start + len(part)}/{len(todo)}", file=sys.stderr, flush=True)
    return done


# ------------------------------------------------------------------------------------------ statistics
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 50
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coefficients, intercept) of an L2-penalised logistic regression on standardised x."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    penalty = np.diag([0.0] + [l2 * len(x)] * (z.shape[1] - 1))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (p - y) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, w[1:], float(w[0])


def auc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson 95 % interval of a proportion k / n."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)]


def bootstrap_mean(values: list[float], n_boot: int = 2000, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of the mean, resampling images; None for fewer than two values."""
    if len(values) < 2:
        return None
    v = np.asarray(values)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 3), round(float(np.percentile(means, 97.5)), 3)]


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


# ------------------------------------------------------------------------------------------ the choice
def _x(recs: list[dict], names: tuple[str, ...]) -> np.ndarray:
    return np.asarray([[r["features"][n] for n in names] for r in recs], dtype=float)


def usable(recs: list[dict], split: str) -> list[dict]:
    """Rows of a split that can speak for it: the segmentation model's training rows are left out of
    validation, and its training and validation rows (which chose its epoch) out of test."""
    barred = {"train": (), "validation": ("train",), "test": ("train", "validation")}[split]
    return [r for r in recs if r["split"] == split and r["seen_split"] not in barred]


def choose(recs: list[dict], detector_sha256: str) -> tuple[Any, dict]:
    """Fit each candidate on train, choose its operating point on validation, pick one, then the mask
    threshold."""
    from pipelines.tasks.ggo_decision import GgoDecisionRule

    train = [r for r in usable(recs, "train") if r["kind"] in ("ggo", "normal_adult")]
    val = usable(recs, "validation")
    y = np.asarray([r["kind"] == "ggo" for r in train], dtype=float)
    tried: list[dict[str, Any]] = []
    for names in CANDIDATES:
        mean, scale, coef, intercept = fit_logistic(_x(train, names), y)
        if (coef <= 0).any():
            # A score that falls as the GGO models' evidence rises explains nothing to a reader: refused.
            tried.append({"features": list(names), "refused": "a coefficient <= 0",
                          "coefficients": [round(float(c), 4) for c in coef]})
            continue
        rule = GgoDecisionRule(features=names, mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                               coefficients=tuple(map(float, coef)), intercept=intercept, threshold=0.0,
                               mask_threshold=0.5, box_floor=BOX_FLOOR, detector_sha256=detector_sha256)
        scores = {id(r): rule.score(_features(r)) for r in val}
        normals: dict[str, list[float]] = defaultdict(list)
        for r in val:
            if r["kind"] == "normal_adult":
                normals[r["dataset"]].append(scores[id(r)])
        thr = lowest_threshold(normals)
        pos = [scores[id(r)] for r in val if r["kind"] == "ggo"]
        neg = [s for v in normals.values() for s in v]
        tried.append({"features": list(names), "threshold": thr, "rule": rule,
                      "validation_ggo_reported": int(sum(s >= thr for s in pos)), "validation_ggo": len(pos),
                      "validation_auc": round(auc(pos, neg), 4),
                      "coefficients": [round(float(c), 4) for c in coef], "intercept": round(intercept, 4)})
    allowed = [t for t in tried if "refused" not in t]
    best = max(allowed,
               key=lambda t: (t["validation_ggo_reported"], -len(t["features"]), t["validation_auc"]))
    rule = replace(best["rule"], threshold=best["threshold"])
    positives = [r for r in val if r["kind"] == "ggo"]
    errors = {t: float(np.mean([abs(r["extent"][str(t)] - r["true_extent"]) for r in positives]))
              for t in MASK_THRESHOLDS}
    mask_t = min(errors, key=lambda t: (errors[t], t))
    rule = replace(rule, mask_threshold=mask_t)
    summary = {"candidates": [{k: v for k, v in t.items() if k != "rule"} for t in tried],
               "chosen": list(rule.features), "threshold": rule.threshold, "mask_threshold": mask_t,
               "validation_extent_mae_by_mask_threshold": {str(t): round(e, 2) for t, e in errors.items()},
               "validation_dice_by_mask_threshold": {
                   str(t): round(float(np.mean([r["dice"][str(t)] for r in positives])), 4)
                   for t in MASK_THRESHOLDS}}
    return rule, summary


def _features(rec: dict) -> Any:
    from pipelines.tasks.ggo_decision import GgoDecisionFeatures

    return GgoDecisionFeatures(**rec["features"])


# ------------------------------------------------------------------------------------------ the figures
def figures(recs: list[dict], rule: Any, split: str) -> dict:
    """Per collection and kind: GGO reported (share, Wilson CI), extent as reported, Dice on GGO images."""
    t = str(rule.mask_threshold)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in usable(recs, split):
        groups[f"{r['kind']}/{r['dataset']}"].append(r)
        if r["kind"] == "normal_adult":
            groups["normal_adult/all"].append(r)
    out: dict[str, Any] = {}
    for name, members in sorted(groups.items()):
        scores = [rule.score(_features(r)) for r in members]
        present = [rule.present(s) for s in scores]
        extents = [r["extent"][t] if p else 0.0 for r, p in zip(members, present, strict=True)]
        k, n = int(sum(present)), len(members)
        ci = wilson(k, n)
        entry: dict[str, Any] = {
            "n": n, "reported": k, "share_reported": round(k / n, 3), "share_ci95": ci,
            "extent_median": round(float(np.median(extents)), 2),
            "extent_p90": round(float(np.percentile(extents, 90)), 2),
            "score_median": round(float(np.median(scores)), 4),
            "boxes_at_operating_images": int(sum(r["boxes_at_operating"] > 0 for r in members)),
            "ungated_extent_median_at_0.6": round(float(np.median([r["extent"]["0.6"] for r in members])), 2)}
        if name.startswith(("normal_adult", "child")):
            entry["specificity"] = round(1 - k / n, 3)
            entry["specificity_ci95"] = [round(1 - ci[1], 3), round(1 - ci[0], 3)]
        if name.startswith("ggo/"):
            entry.update(_ggo_figures(members, present, t))
        out[name] = entry
    return out


def _ggo_figures(members: list[dict], present: list[bool], t: str) -> dict[str, Any]:
    """Sensitivity, Dice and extent error on radiologist-labelled GGO images (absent: no mask, extent 0)."""
    k, n = int(sum(present)), len(members)
    reported = [r for r, p in zip(members, present, strict=True) if p]
    dice_rep = [r["dice"][t] for r in reported]
    err = [abs((r["extent"][t] if p else 0.0) - r["true_extent"])
           for r, p in zip(members, present, strict=True)]
    err_rep = [abs(r["extent"][t] - r["true_extent"]) for r in reported]
    return {
        "sensitivity": round(k / n, 3), "sensitivity_ci95": wilson(k, n),
        "dice_on_reported_mean": round(float(np.mean(dice_rep)), 4) if dice_rep else None,
        "dice_on_reported_ci95": bootstrap_mean(dice_rep),
        "dice_all_mean": round(float(np.mean([r["dice"][t] for r in members])), 4),
        "dice_all_ci95": bootstrap_mean([r["dice"][t] for r in members]),
        "dice_ungated_unrestricted_bundle": round(float(np.mean(
            [r["dice_unrestricted_bundle"] for r in members])), 4),
        "extent_abs_error_mean": round(float(np.mean(err)), 2),
        "extent_abs_error_reported_mean": round(float(np.mean(err_rep)), 2) if err_rep else None,
        "true_extent_median": round(float(np.median([r["true_extent"] for r in members])), 2),
        "reported_extent_median_on_reported": round(float(np.median(
            [r["extent"][t] for r in reported])), 2) if reported else None,
    }


def covid_candidate(recs: list[dict]) -> dict:
    """Report only: the same fit and operating point on P(COVID-19) (with and without the box confidence).

    Refused before it was measured as a candidate the pipeline could ship: the COVID-19 model reads the
    collection more than the lungs (data README; covid card: near chance within its own collection), and a
    decision built on it would call GGO by where a picture comes from. Measured to show what it would do,
    children included.
    """
    out = {}
    for names in (("covid_probability",), ("max_box_confidence", "covid_probability")):
        def x(rows: list[dict], names: tuple[str, ...] = names) -> np.ndarray:
            return np.asarray([[r["covid_probability"] if n == "covid_probability" else r["features"][n]
                                for n in names] for r in rows], dtype=float)

        train = [r for r in usable(recs, "train") if r["kind"] in ("ggo", "normal_adult")
                 and r.get("covid_probability") is not None]
        labels = np.asarray([r["kind"] == "ggo" for r in train], dtype=float)
        mean, scale, coef, intercept = fit_logistic(x(train), labels)

        def score(rows: list[dict], mean: np.ndarray = mean, scale: np.ndarray = scale,
                  coef: np.ndarray = coef,
                  intercept: float = intercept, x: Any = x) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-(intercept + ((x(rows) - mean) / scale) @ coef)))

        val = [r for r in usable(recs, "validation") if r.get("covid_probability") is not None]
        normals: dict[str, list[float]] = defaultdict(list)
        for r, s in zip(val, score(val), strict=True):
            if r["kind"] == "normal_adult":
                normals[r["dataset"]].append(float(s))
        thr = lowest_threshold(normals)
        entry: dict[str, Any] = {"coefficients": [round(float(c), 4) for c in coef],
                                 "threshold": round(thr, 4)}
        for split in ("validation", "test"):
            rows = [r for r in usable(recs, split) if r.get("covid_probability") is not None]
            groups: dict[str, list[bool]] = defaultdict(list)
            for r, s in zip(rows, score(rows), strict=True):
                groups[f"{r['kind']}/{r['dataset']}"].append(bool(s >= thr))
            entry[split] = {g: f"{sum(v)}/{len(v)}" for g, v in sorted(groups.items())}
        out["+".join(names)] = entry
    return out


def write_rule(bundle_dir: Path, rule: Any) -> None:
    """Add ``ggo_decision`` to a ggo_segmentation bundle's metadata.json (weights and sha256 untouched)."""
    path = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["ggo_decision"] = rule.to_metadata()
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--manifest", type=Path, default=REPO / "runs" / "manifests" / "ggo_neg100_ieee.csv")
    ap.add_argument("--seen", type=Path, default=REPO / "runs" / "manifests" / "ggo_with_normals15.csv")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--features", type=Path, default=REPO / "runs" / "ggo_decision" / "features.jsonl")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ggo_decision" / "report.json")
    ap.add_argument("--write-metadata", action="store_true",
                    help="store the chosen rule as ggo_decision in the GGO segmentation bundle's metadata")
    args = ap.parse_args(argv)

    from pipelines.bundle import read_metadata

    rows = image_rows(args.data_root, args.manifest, args.seen if args.seen.is_file() else None)
    recs = measure(rows, args.features, args.models)
    covid = measure_covid(rows, args.features.with_name("covid.jsonl"), args.models)
    for r in recs:
        r["kind"] = kind(r)
        r["covid_probability"] = covid.get(r["path"])
    print(dict(sorted(Counter((r["split"], r["kind"], r["dataset"]) for r in recs).items())), file=sys.stderr)
    detector_sha = read_metadata(args.models / "ggo_detection").weights["sha256"]
    rule, summary = choose(recs, detector_sha)
    measured_line = (f"fitted on train, operating point on validation: GGO reported on "
                     f"{_share_line(figures(recs, rule, 'validation'))} (training.recipes.ggo_decision)")
    rule = replace(rule, measured=measured_line)
    report = {"rule": rule.to_metadata(), "choice": summary,
              "validation": figures(recs, rule, "validation"), "test": figures(recs, rule, "test"),
              "report_only_covid_candidates": covid_candidate(recs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    if args.write_metadata:
        write_rule(args.models / "ggo_segmentation", rule)
        print(f"wrote ggo_decision to {args.models / 'ggo_segmentation' / 'configs' / 'metadata.json'}",
              file=sys.stderr)
    return 0


def _share_line(fig: dict) -> str:
    parts = [f"{v['reported']}/{v['n']} {k}" for k, v in fig.items()
             if k.startswith("normal_adult/") and k != "normal_adult/all" or k.startswith("ggo/")]
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
