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

import json
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.bundle import load_bundle, read_metadata
from pipelines.image import load_image
from pipelines.results import Box
from pipelines.tasks.covid import CovidClassifier
from pipelines.tasks.ggo_decision import GgoDecisionFeatures, GgoDecisionRule, decision_features
from training.cache import load_mask
from training.ggo_measure import (
    BOX_FLOOR,
    LogisticModel,
    append_records,
    auc,
    bootstrap_mean,
    fit_logistic,
    image_rows,
    load_ggo_models,
    load_lungs,
    logistic_score,
    lowest_threshold,
    normal_scores,
    read_cache,
    recipe_arguments,
    usable,
    wilson,
)
from training.metrics import dice_iou

MASK_THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(13))
L2 = 1e-2  # per image: the penalty grows with the training rows
NEWTON_STEPS = 50
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
    done = read_cache(features_path)
    todo = [r for r in rows if r["path"] not in done]
    if todo:
        ggo = load_ggo_models(models)
        for start in range(0, len(todo), batch):
            part = todo[start:start + batch]
            images = [load_image(r["path"]) for r in part]
            lung_masks = [lr.mask for lr in ggo.lungs.predict(images)]
            boxes = ggo.detector.predict(images, min_confidence=BOX_FLOOR)
            maps = ggo.segmenter.predict(images, lung_masks)
            measured = []
            for r, im, lung, bx, (_, prob) in zip(part, images, lung_masks, boxes, maps, strict=True):
                truth = load_mask(r["ggo_mask"], im.pixels.shape) if r["ggo_mask"] else None
                rec = {**r, **_record(bx, prob, lung, truth, ggo.detector.threshold, ggo.segmenter.threshold)}
                done[r["path"]] = rec
                measured.append(rec)
            append_records(features_path, measured)
            print(f"measured {start + len(part)}/{len(todo)}", file=sys.stderr, flush=True)
    return [done[r["path"]] | {"split": r["split"], "origin": r["origin"], "seen_split": r["seen_split"]}
            for r in rows]


def _record(boxes: list[Box], prob: np.ndarray, lung: np.ndarray, truth: np.ndarray | None,
            box_threshold: float, mask_threshold: float) -> dict[str, Any]:
    """One image's decision features, extent per pixel threshold (inside the lungs) and, with a
    radiologist mask, its true extent and Dice per threshold."""
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
    done = {path: rec["covid_probability"] for path, rec in read_cache(covid_path).items()}
    todo = [r for r in rows if r["path"] not in done]
    if todo:
        torch.set_num_threads(1)
        covid = CovidClassifier(load_bundle(models / "covid", "covid"))
        lungs = covid.input_lungs or load_lungs(models)
        for start in range(0, len(todo), batch):
            part = todo[start:start + batch]
            images = [load_image(r["path"]) for r in part]
            masks = [lr.mask for lr in lungs.predict(images)]
            keep = [i for i, m in enumerate(masks) if m.any() or not covid.needs_lungs]
            results = covid.predict([images[i] for i in keep], [masks[i] for i in keep])
            for i, res in zip(keep, results, strict=True):
                done[part[i]["path"]] = res.probability
            append_records(covid_path, [{"path": part[i]["path"], "covid_probability": res.probability}
                                        for i, res in zip(keep, results, strict=True)])
            print(f"covid {start + len(part)}/{len(todo)}", file=sys.stderr, flush=True)
    return done


# ------------------------------------------------------------------------------------------ the choice
def _x(recs: list[dict], names: tuple[str, ...]) -> np.ndarray:
    return np.asarray([[r["features"][n] for n in names] for r in recs], dtype=float)


def choose(recs: list[dict], detector_sha256: str) -> tuple[GgoDecisionRule, dict]:
    """Fit each candidate on train, choose its operating point on validation, pick one, then the mask
    threshold."""
    train = [r for r in usable(recs, "train") if r["kind"] in ("ggo", "normal_adult")]
    val = usable(recs, "validation")
    y = np.asarray([r["kind"] == "ggo" for r in train], dtype=float)
    tried: list[dict[str, Any]] = []
    for names in CANDIDATES:
        mean, scale, w = fit_logistic(_x(train, names), y, penalty=L2 * len(train), steps=NEWTON_STEPS)
        coef, intercept = w[1:], float(w[0])
        if (coef <= 0).any():
            # A score that falls as the GGO models' evidence rises explains nothing to a reader: refused.
            tried.append({"features": list(names), "refused": "a coefficient <= 0",
                          "coefficients": [round(float(c), 4) for c in coef]})
            continue
        rule = GgoDecisionRule(features=names, mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                               coefficients=tuple(map(float, coef)), intercept=intercept, threshold=0.0,
                               mask_threshold=0.5, box_floor=BOX_FLOOR, detector_sha256=detector_sha256)
        scores = {id(r): rule.score(_features(r)) for r in val}
        normals = normal_scores(val, [scores[id(r)] for r in val])
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


def _features(rec: dict) -> GgoDecisionFeatures:
    return GgoDecisionFeatures(**rec["features"])


# ------------------------------------------------------------------------------------------ the figures
def figures(recs: list[dict], rule: GgoDecisionRule, split: str) -> dict:
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
        model = fit_logistic(x(train), labels, penalty=L2 * len(train), steps=NEWTON_STEPS)

        def score(rows: list[dict], model: LogisticModel = model, x: Any = x) -> np.ndarray:
            return logistic_score(model, x(rows))

        val = [r for r in usable(recs, "validation") if r.get("covid_probability") is not None]
        thr = lowest_threshold(normal_scores(val, [float(s) for s in score(val)]))
        entry: dict[str, Any] = {"coefficients": [round(float(c), 4) for c in model[2][1:]],
                                 "threshold": round(thr, 4)}
        for split in ("validation", "test"):
            rows = [r for r in usable(recs, split) if r.get("covid_probability") is not None]
            groups: dict[str, list[bool]] = defaultdict(list)
            for r, s in zip(rows, score(rows), strict=True):
                groups[f"{r['kind']}/{r['dataset']}"].append(bool(s >= thr))
            entry[split] = {g: f"{sum(v)}/{len(v)}" for g, v in sorted(groups.items())}
        out["+".join(names)] = entry
    return out


def write_rule(bundle_dir: Path, rule: GgoDecisionRule) -> None:
    """Add ``ggo_decision`` to a ggo_segmentation bundle's metadata.json (weights and sha256 untouched)."""
    path = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["ggo_decision"] = rule.to_metadata()
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = recipe_arguments(__doc__.splitlines()[0], "ggo_decision")
    ap.add_argument("--write-metadata", action="store_true",
                    help="store the chosen rule as ggo_decision in the GGO segmentation bundle's metadata")
    args = ap.parse_args(argv)

    rows = image_rows(args.data_root, args.manifest, args.seen)
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
