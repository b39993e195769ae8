"""Can a small head on lung-restricted features of the shipped GGO models tell GGO from normal lungs?

    nice -n 10 .venv/bin/python -m training.recipes.ggo_head [--data-root ../shared/data] \
        [--features runs/ggo_head/features.jsonl] [--out runs/ggo_head/report.json]

Manifests first, as for ``training.recipes.ggo_decision``; the images are the decision's
(``training.ggo_measure.image_rows``: GeneralBlockchain GGO images with radiologist masks, normal adults of
NIH / OpenIST / ieee8023, Kermany children, held-out ieee8023 COVID-19 pictures), plus every other ieee8023
frontal picture not in GeneralBlockchain, with its Brixia scores
(``annotations/brixia_public-annotations.csv``) as weak labels, plus every NIH ChestX-ray14 image with an
RSNA-2018 "Lung Opacity" box (``nih_cxr14_talo/annotations/rsna_opacity_boxes.csv``, 129 images of 106
patients). Splits are patient-level and consistent with the GGO manifests: a patient already split keeps its
split; the others are dealt with ``assign_splits`` (70/15/15, the GGO seed).

Why: the shipped decision reads only the detector's top box and reports 1 of 14 GGO test images (GGO card).
The GGO data are confounded with their collection (every GGO image is an ieee8023 picture; most normals are
NIH and OpenIST), so a head may learn the collection. This recipe measures that before anything is shipped.

Features, each computed inside the pipeline's lung mask only (:data:`FAMILIES`): the GGO U-Net's encoder
activations at 1/8 and 1/16 resolution averaged (mean, sd per channel) over the lung pixels; P(GGO)
statistics, histogram and six lung zones; the detector's top confidences and box cover of the lung; the lung
intensities standardised by the lung's own mean and sd. The U-Net families are measured on the image, on the
image with everything but the lungs replaced by the lung mean ("lungs only"; a head is also trained on it),
and, for test images, with the lungs replaced by their mean ("lungs removed").

Rule, fixed before the figures:
- labels: GGO = radiologist GGO mask, ieee8023 Brixia global >= 6 (mean of the two raters), ieee8023 COVID-19
  pictures, NIH images with an RSNA "Lung Opacity" box (kind ``nih_opacity``, whatever their NIH label: the
  5 NIH "No Finding" images with such a box are positives, never normal adults); not GGO = normal adults of
  every collection, ieee8023 Brixia global <= 1, Kermany children;
- ``nih_opacity`` gives the positives a second collection (NIH), so that "looks like ieee8023" no longer
  separates them: it is used as a positive in the heads' fits only (every cross-validation fold's training
  part and the refit for the test report). It sets nothing: the operating point is set on normal adults, the
  gate reads the ieee8023 and validation GGO images as before, and its own figures (out-of-fold and test share
  reported at the point, AUC against the NIH normal adults) are reported apart, per collection;
- per family, an L2 logistic regression (balanced classes) in a 5-fold cross-validation by patient over
  train + validation (14 validation GGO images and 3 validation ieee8023 normals cannot set a 10 % point);
- operating point on the out-of-fold scores: the lowest threshold that reports GGO on <= 10 % of the normal
  adults of every collection (``training.ggo_measure.lowest_threshold``);
- ship gate: out-of-fold within-ieee8023 AUC (GGO vs ieee8023 normals and Brixia <= 1) >= 0.80 AND
  >= 60 % of the unseen (validation) GGO images reported at that point. A family that fails is reported
  and not shipped (one that passed would still need its features computed by the pipeline's decision).
The test split is read only for the report (per collection, Wilson 95 % CIs; test AUCs of the lungs-only
and lungs-removed inputs).
"""

from __future__ import annotations

import csv
import json
import sys
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.image import load_image
from pipelines.preprocess import prepare_input
from pipelines.results import Box
from pipelines.runtime import foreground_probability, inference, stack
from pipelines.tasks.ggo import GgoSegmenter
from training.cache import load_mask
from training.datasets import scan_dataset
from training.ggo_measure import (
    BOX_FLOOR,
    LogisticModel,
    append_records,
    auc,
    fit_logistic,
    image_row,
    image_rows,
    load_ggo_models,
    logistic_score,
    lowest_threshold,
    normal_scores,
    read_cache,
    recipe_arguments,
    seen_splits,
    split_patients,
    usable,
    wilson,
)
from training.manifest import ManifestRow
from training.metrics import dice_iou

FOLDS = 5
L2 = 100.0
NEWTON_STEPS = 100
MIN_WITHIN_AUC = 0.80
MIN_SENSITIVITY = 0.60
BRIXIA_HIGH, BRIXIA_LOW = 6.0, 1.0
POSITIVE = ("ggo", "brixia_high", "covid", "nih_opacity")
NEGATIVE = ("normal_adult", "brixia_low", "child")
VIEWS = ("image", "lungs_only", "lungs_removed")


# ----------------------------------------------------------------------------------------- the images
def all_rows(data_root: Path, manifest: Path, seen: Path | None) -> list[dict[str, Any]]:
    """The decision's rows plus the other ieee8023 frontals, Brixia scores attached where scored, plus the NIH
    images with an RSNA "Lung Opacity" box (``rsna_opacity`` True on them, False on every other row)."""
    rows = image_rows(data_root, manifest, seen)
    split_of = {r["patient_id"]: r["split"] for r in rows}
    gb = scan_dataset("shared_generalblockchain", data_root / "generalblockchain_cxr_seg")
    ieee = [r for r in scan_dataset("shared_ieee8023", data_root / "ieee8023_covid_cxr")
            if r.projection != "lateral"]
    taken = {r["path"] for r in rows} | {r.image_path for r in gb}
    gb_keys = {r.image_key for r in gb}
    extra = [r for r in ieee if r.image_path not in taken and r.image_key not in gb_keys]
    rows += added_rows(extra, split_of, "ieee8023_extra", seen_split={})
    brixia = read_brixia(data_root / "ieee8023_covid_cxr" / "annotations" / "brixia_public-annotations.csv")
    source = {r.image_path: r for r in [*gb, *ieee]}
    for row in rows:
        src = source.get(row["path"])
        if src is not None:
            row["findings"] = list(src.findings)
            name = src.image_key.split(":", 1)[1] if src.image_key.startswith("ieee8023:") else ""
            if name in brixia:
                row["brixia_global"] = brixia[name]
    rows += nih_opacity_rows(data_root, rows, seen)
    return rows


def nih_opacity_rows(data_root: Path, rows: list[dict[str, Any]], seen: Path | None) -> list[dict[str, Any]]:
    """Flag the rows that are NIH images with an RSNA "Lung Opacity" box (in place) and return the others of
    those images as new rows: a patient already in ``rows`` keeps its split, the rest are dealt with
    :func:`split_patients`; ``seen_split`` as :func:`training.ggo_measure.image_rows` marks it."""
    folder = data_root / "nih_cxr14_talo"
    boxed = read_rsna_opacity_files(folder / "annotations" / "rsna_opacity_boxes.csv")
    for row in rows:
        row["rsna_opacity"] = row["dataset"] == "nih_cxr14" and Path(row["path"]).name in boxed
    taken = {r["path"] for r in rows}
    new = [r for r in scan_dataset("shared_nih_talo", folder)
           if Path(r.image_path).name in boxed and r.projection != "lateral" and r.image_path not in taken]
    split_of = {r["patient_id"]: r["split"] for r in rows}
    return [row | {"rsna_opacity": True}
            for row in added_rows(new, split_of, "nih_opacity", seen_split=seen_splits(seen))]


def added_rows(records: list[ManifestRow], split_of: dict[str, str], origin: str, *,
               seen_split: dict[str, str]) -> list[dict[str, Any]]:
    """Rows for images the GGO manifests do not hold: a patient in ``split_of`` keeps that split, the
    others are dealt with :func:`split_patients` (in place)."""
    split_patients([r for r in records if r.patient_id not in split_of])
    return [image_row(r, split=split_of.get(r.patient_id, r.split), origin=origin, ggo_mask="",
                      seen_split=seen_split.get(r.patient_id, "")) for r in records]


def read_rsna_opacity_files(path: Path) -> set[str]:
    """File names of the NIH images with at least one RSNA "Lung Opacity" box (one row per box)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return {Path(rec["file"]).name for rec in csv.DictReader(fh)}


def read_brixia(path: Path) -> dict[str, float]:
    """Original ieee8023 file name -> Brixia global score (0-18), mean of the two raters."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return {rec["filename"]: (float(rec["S-Global"]) + float(rec["J-Global"])) / 2.0
                for rec in csv.DictReader(fh)}


def kind(rec: dict[str, Any]) -> str:
    """ggo, nih_opacity, brixia_high / brixia_low / brixia_mid, covid, normal_adult, child, or other (unused).

    An NIH image with an RSNA "Lung Opacity" box is ``nih_opacity`` whatever its NIH label ("No Finding" too).
    """
    if rec.get("has_truth"):
        return "ggo"
    if rec.get("rsna_opacity"):
        return "nih_opacity"
    if rec["dataset"] == "kermany_pediatric":
        return "child"
    if rec["dataset"] in ("nih_cxr14", "openist"):
        return "normal_adult"
    if rec["dataset"] != "ieee8023":
        return "other"
    findings, score = rec.get("findings") or [], rec.get("brixia_global")
    if findings == ["No Finding"] and not score:
        return "normal_adult"
    if score is not None:
        if score >= BRIXIA_HIGH:
            return "brixia_high"
        return "brixia_low" if score <= BRIXIA_LOW else "brixia_mid"
    return "covid" if rec["covid"] == "1" else "other"


# ------------------------------------------------------------------------------------ the measurement
def lung_zones(lung: np.ndarray) -> list[np.ndarray]:
    """Six zones (each side of the lung mask's centre column, upper / middle / lower third of its height)."""
    ys, xs = np.nonzero(lung)
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    centre = (int(xs.min()) + int(xs.max())) / 2.0
    yy, xx = np.mgrid[0:lung.shape[0], 0:lung.shape[1]]
    zones = []
    for side in (xx < centre, xx >= centre):
        for k in range(3):
            band = (yy >= y0 + k * (y1 - y0) / 3.0) & (yy < y0 + (k + 1) * (y1 - y0) / 3.0)
            zones.append(lung & band & side)
    return zones


def map_features(prob: np.ndarray, lung: np.ndarray) -> list[float]:
    """P(GGO) inside the lungs: mean, sd, percentiles, 10-bin histogram, zone means and zone z-scores."""
    inside = prob[lung]
    mean, sd = float(inside.mean()), float(inside.std())
    zones = [float(prob[z].mean()) if z.any() else mean for z in lung_zones(lung)]
    return ([mean, sd, *np.percentile(inside, [10, 25, 50, 75, 90, 99]).tolist()]
            + (np.histogram(inside, bins=10, range=(0.0, 1.0))[0] / inside.size).tolist()
            + zones + [(z - mean) / (sd + 1e-3) for z in zones])


def box_features(boxes: Sequence[Box], lung: np.ndarray) -> list[float]:
    """Top three confidences, their sum over the top ten, boxes >= 0.1, share of the lung under boxes."""
    conf = sorted((b.confidence for b in boxes), reverse=True)[:10] + [0.0] * 10
    cover = []
    for t in (0.05, 0.1, 0.25):
        m = np.zeros_like(lung)
        for b in boxes:
            if b.confidence >= t:
                m[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))] = True
        cover.append(float((m & lung).sum()) / float(lung.sum()))
    return [*conf[:3], float(sum(conf[:10])), float(sum(c >= 0.1 for c in conf[:10])), *cover]


def intensity_features(pixels: np.ndarray, lung: np.ndarray) -> list[float]:
    """Lung intensities standardised by the lung's own mean and sd (percentiles, zones, edge energy)."""
    inside = pixels[lung]
    mean, sd = float(inside.mean()), float(inside.std()) + 1e-6
    gy, gx = np.gradient(pixels)
    grad = np.hypot(gy, gx)[lung] / sd
    zones = [(float(pixels[z].mean()) - mean) / sd if z.any() else 0.0 for z in lung_zones(lung)]
    return ([sd] + ((np.percentile(inside, [10, 25, 50, 75, 90, 99]) - mean) / sd).tolist() + zones
            + [float(grad.mean()), float(np.percentile(grad, 90))])


def view_pixels(pixels: np.ndarray, lung: np.ndarray, view: str) -> np.ndarray:
    """The image, the lungs only (the rest = lung mean) or the lungs removed (the lungs = their mean)."""
    if view == "image":
        return pixels
    fill = np.float32(pixels[lung].mean())
    return np.where(lung, pixels, fill) if view == "lungs_only" else np.where(lung, fill, pixels)


class UnetReader:
    """The GGO U-Net's P(GGO) map and its encoder activations at 1/8 and 1/16 averaged over the lungs."""

    def __init__(self, segmenter: GgoSegmenter) -> None:
        self.segmenter = segmenter
        self._store: dict[str, torch.Tensor] = {}
        unet = segmenter.bundle.network.model
        level3 = unet[1].submodule[1].submodule[0]
        level4 = unet[1].submodule[1].submodule[1].submodule[0]
        level3.register_forward_hook(lambda _m, _i, out: self._store.__setitem__("l3", out.detach()))
        level4.register_forward_hook(lambda _m, _i, out: self._store.__setitem__("l4", out.detach()))

    def read(self, pixels: list[np.ndarray], lungs: list[np.ndarray]) -> list[dict[str, Any]]:
        seg = self.segmenter
        prepared = [prepare_input(p, seg.spec, m) for p, m in zip(pixels, lungs, strict=True)]
        with inference(seg.bundle.device):
            probs = foreground_probability(seg.bundle.network(stack([p.array for p in prepared],
                                                                    seg.bundle.device))).cpu()
        out = []
        for j, (prep, lung) in enumerate(zip(prepared, lungs, strict=True)):
            prob = np.clip(prep.geometry.to_source(probs[j]), 0.0, 1.0)
            lung_in_model = prep.geometry.mask_to_model(lung).astype(np.float32)
            in_model = torch.from_numpy(lung_in_model)[None, None]
            rec = {"prob": map_features(prob, lung), "_prob_map": prob}
            for level in ("l3", "l4"):
                fmap = self._store[level][j].float().cpu()
                size = (int(fmap.shape[-2]), int(fmap.shape[-1]))
                pooled = torch.nn.functional.adaptive_avg_pool2d(in_model, size)[0, 0] >= 0.5
                if not bool(pooled.any()):
                    pooled[...] = True
                v = fmap[:, pooled]
                rec[f"unet_{level}"] = v.mean(dim=1).tolist() + v.std(dim=1).tolist()
            out.append(rec)
        return out


def measure(rows: list[dict[str, Any]], features_path: Path, models: Path, batch: int = 8) -> list[dict]:
    """Run the lungs, detector and segmentation bundles (pipeline code) on rows not yet in the cache."""
    done = read_cache(features_path)
    todo = [r for r in rows if r["path"] not in done]
    if todo:
        ggo = load_ggo_models(models)
        unet = UnetReader(ggo.segmenter)
        batches = [[r for r in todo if r["split"] == s] for s in ("train", "validation", "test")]
        parts = [b[i:i + batch] for b in batches for i in range(0, len(b), batch)]
        for n_part, part in enumerate(parts):
            images = [load_image(r["path"]) for r in part]
            masks = [lr.mask for lr in ggo.lungs.predict(images)]
            keep = [i for i, m in enumerate(masks) if m.sum() >= 100]
            boxes = ggo.detector.predict([images[i] for i in keep], min_confidence=BOX_FLOOR)
            # The lungs-removed input is read on test images only (the report's check).
            views: dict[str, list[dict[str, Any]]] = {
                v: unet.read([view_pixels(images[i].pixels, masks[i], v) for i in keep],
                             [masks[i] for i in keep])
                if v != "lungs_removed" or part[0]["split"] == "test" else [{}] * len(keep)
                for v in VIEWS}
            measured = []
            for n, i in enumerate(keep):
                r, lung, pixels = part[i], masks[i], images[i].pixels
                rec: dict[str, Any] = {**r, "box": box_features(boxes[n], lung),
                                       "intensity": intensity_features(pixels, lung)}
                for v in VIEWS:
                    if views[v][n]:
                        rec[v] = {k: val for k, val in views[v][n].items() if not k.startswith("_")}
                truth = load_mask(r["ggo_mask"], pixels.shape) if r["ggo_mask"] else None
                rec["has_truth"] = bool(truth is not None and truth.any())
                if truth is not None and rec["has_truth"]:
                    mask = (views["image"][n]["_prob_map"] >= 0.6) & lung
                    rec["dice_at_0.6"] = dice_iou(mask, truth)[0]
                measured.append(rec)
            for i in set(range(len(part))) - set(keep):
                measured.append({**part[i], "no_lungs": True})
            for rec in measured:
                done[rec["path"]] = rec
            append_records(features_path, measured)
            print(f"measured batch {n_part + 1}/{len(parts)}", file=sys.stderr, flush=True)
    carried = ("split", "origin", "seen_split", "findings", "brixia_global", "rsna_opacity")
    return [done[r["path"]] | {k: r[k] for k in carried if k in r} for r in rows]


# ------------------------------------------------------------------------------------------ the head
FAMILIES: dict[str, Callable[[dict, str], list[float]]] = {
    "unet_encoder": lambda r, v: r[v]["unet_l3"] + r[v]["unet_l4"],
    "unet_encoder_l3": lambda r, v: r[v]["unet_l3"],
    "probability_map": lambda r, v: r[v]["prob"],
    "probability_map+boxes": lambda r, v: r[v]["prob"] + r["box"],
    "boxes": lambda r, v: r["box"],
    "lung_intensity": lambda r, v: r["intensity"],
    "all": lambda r, v: r[v]["unet_l3"] + r[v]["unet_l4"] + r[v]["prob"] + r["box"] + r["intensity"],
}


IMAGE_ONLY = ("boxes", "lung_intensity", "all")  # computed once, on the image as it is


def fit_head(x: np.ndarray, y: np.ndarray) -> LogisticModel:
    """(mean, scale, weights with intercept first) of a class-balanced L2 logistic regression: hundreds of
    features for a few hundred images, hence a fixed penalty (not one per image) and more Newton steps."""
    return fit_logistic(x, y, penalty=L2, steps=NEWTON_STEPS, balanced=True)


def head_score(model: LogisticModel, x: np.ndarray) -> np.ndarray:
    """P(GGO) of a :func:`fit_head` model for the rows of x."""
    return logistic_score(model, x)


def fold_of(patient_id: str) -> int:
    """A patient's cross-validation fold (stable across runs and machines: crc32, not Python's hash)."""
    return zlib.crc32(patient_id.encode()) % FOLDS


def out_of_fold(recs: list[dict], family: str, view: str = "image") -> dict[str, float]:
    """Out-of-fold head scores for every train + validation record of a labelled kind."""
    f = FAMILIES[family]
    dev = [r for r in recs if r["split"] in ("train", "validation") and r["kind"] in POSITIVE + NEGATIVE]
    scores: dict[str, float] = {}
    for k in range(FOLDS):
        train = [r for r in dev if fold_of(r["patient_id"]) != k]
        held = [r for r in dev if fold_of(r["patient_id"]) == k]
        model = fit_head(np.asarray([f(r, view) for r in train]),
                         np.asarray([r["kind"] in POSITIVE for r in train], dtype=float))
        for r, s in zip(held, head_score(model, np.asarray([f(r, view) for r in held])), strict=True):
            scores[r["path"]] = float(s)
    return scores


def within_ieee8023(recs: list[dict], scores: dict[str, float]) -> tuple[list[float], list[float]]:
    """(GGO-like, not GGO) scores inside ieee8023 alone: GGO-masked pictures the GGO models did not train on,
    Brixia >= 6 and COVID-19 pictures vs ieee8023 normals and Brixia <= 1."""
    pos = [scores[r["path"]] for r in recs if r["path"] in scores and (
        r["kind"] in ("brixia_high", "covid") or (r["kind"] == "ggo" and r["seen_split"] != "train"))]
    neg = [scores[r["path"]] for r in recs if r["path"] in scores and r["dataset"] == "ieee8023"
           and r["kind"] in ("normal_adult", "brixia_low")]
    return pos, neg


def assess(recs: list[dict], family: str, view: str = "image") -> dict[str, Any]:
    """One family read on one input (``view``): out-of-fold operating point and gate, then the test report."""
    oof = out_of_fold(recs, family, view)
    dev = [r for r in recs if r["path"] in oof]
    normals = normal_scores(dev, [oof[r["path"]] for r in dev])
    threshold = lowest_threshold(normals)
    unseen_ggo = [oof[r["path"]] for r in dev if r["kind"] == "ggo" and r["split"] == "validation"]
    pos, neg = within_ieee8023(recs, oof)
    other = [s for d, v in normals.items() if d != "ieee8023" for s in v]
    sens = float(np.mean([s >= threshold for s in unseen_ggo])) if unseen_ggo else 0.0
    entry: dict[str, Any] = {
        "oof_within_ieee8023_auc": round(auc(pos, neg), 3),
        "oof_ieee8023_positive_vs_nih_openist_normal_auc": round(auc(pos, other), 3),
        "oof_threshold": round(threshold, 4),
        "oof_binding_threshold_per_collection": {d: round(lowest_threshold({d: v}), 4)
                                                 for d, v in sorted(normals.items())},
        "oof_validation_ggo_reported": f"{sum(s >= threshold for s in unseen_ggo)}/{len(unseen_ggo)}",
        "oof_ieee8023_normal_median": round(float(np.median(normals["ieee8023"])), 3),
        "oof_nih_openist_normal_median": round(float(np.median(other)), 3),
        "oof_unseen_ggo_median": round(float(np.median(unseen_ggo)), 3) if unseen_ggo else None,
        **nih_opacity_figures(dev, oof, normals, threshold),
    }
    entry["passes_gate"] = bool(entry["oof_within_ieee8023_auc"] >= MIN_WITHIN_AUC
                                and sens >= MIN_SENSITIVITY)
    # The trap, measured so that it can be named: the point set on NIH and OpenIST alone, blind to the
    # ieee8023 normals (the collection every GGO image comes from). Never a candidate.
    blind = lowest_threshold({d: v for d, v in normals.items() if d != "ieee8023"})
    ieee_normals = normals["ieee8023"]
    entry["if_blind_to_ieee8023_normals"] = {
        "threshold": round(blind, 4),
        "oof_ieee8023_normals_reported": f"{sum(s >= blind for s in ieee_normals)}/{len(ieee_normals)}",
        "oof_validation_ggo_reported": f"{sum(s >= blind for s in unseen_ggo)}/{len(unseen_ggo)}"}
    entry["test"] = test_report(recs, family, {"operating": threshold, "blind": blind}, view)
    return entry


def nih_opacity_figures(dev: list[dict], oof: dict[str, float], normals: dict[str, list[float]],
                        threshold: float) -> dict[str, Any]:
    """The new positive kind's own out-of-fold figures (report only, it sets nothing): how many NIH images
    with an RSNA "Lung Opacity" box are reported at the point, and their AUC against the NIH normal adults."""
    scores = [oof[r["path"]] for r in dev if r["kind"] == "nih_opacity"]
    return {"oof_nih_opacity_reported": f"{sum(s >= threshold for s in scores)}/{len(scores)}",
            "oof_nih_opacity_vs_nih_normal_auc": round(auc(scores, normals.get("nih_cxr14", [])), 3),
            "oof_nih_opacity_median": round(float(np.median(scores)), 3) if scores else None}


def test_report(recs: list[dict], family: str, thresholds: dict[str, float], trained_on: str = "image"
                ) -> dict[str, Any]:
    """The head refitted on train + validation, read on test: per collection reported share (Wilson CI) on
    its own input at each named threshold, AUC GGO vs normal adults and within-ieee8023 AUC on every input."""
    f = FAMILIES[family]
    dev = [r for r in recs if r["split"] in ("train", "validation") and r["kind"] in POSITIVE + NEGATIVE]
    model = fit_head(np.asarray([f(r, trained_on) for r in dev]),
                     np.asarray([r["kind"] in POSITIVE for r in dev], dtype=float))
    test = [r for r in usable(recs, "test") if r["kind"] != "other"]
    out: dict[str, Any] = {}
    for view in VIEWS:
        if family in IMAGE_ONLY and view != "image":
            continue  # these families do not go through the U-Net
        scores = dict(zip([r["path"] for r in test],
                          head_score(model, np.asarray([f(r, view) for r in test])).tolist(), strict=True))
        ggo = [scores[r["path"]] for r in test if r["kind"] == "ggo"]
        normal = [scores[r["path"]] for r in test if r["kind"] == "normal_adult"]
        pos, neg = within_ieee8023(test, scores)
        opacity = [scores[r["path"]] for r in test if r["kind"] == "nih_opacity"]
        nih_normal = [scores[r["path"]] for r in test
                      if r["kind"] == "normal_adult" and r["dataset"] == "nih_cxr14"]
        view_entry: dict[str, Any] = {"auc_ggo_vs_normal_adults": round(auc(ggo, normal), 3),
                                      "auc_nih_opacity_vs_nih_normals": round(auc(opacity, nih_normal), 3),
                                      "within_ieee8023_auc": round(auc(pos, neg), 3),
                                      "within_ieee8023_n": [len(pos), len(neg)]}
        if view == trained_on:
            groups: dict[str, list[float]] = defaultdict(list)
            for r in test:
                groups[f"{r['kind']}/{r['dataset']}"].append(scores[r["path"]])
            for label, threshold in thresholds.items():
                view_entry[label] = {}
                for name, vals in sorted(groups.items()):
                    k = int(sum(s >= threshold for s in vals))
                    view_entry[label][name] = {"reported": k, "n": len(vals),
                                               "share_ci95": wilson(k, len(vals))}
        out[view] = view_entry
    return out


def main(argv: list[str] | None = None) -> int:
    args = recipe_arguments(__doc__.splitlines()[0], "ggo_head").parse_args(argv)

    rows = all_rows(args.data_root, args.manifest, args.seen)
    recs = [r for r in measure(rows, args.features, args.models) if not r.get("no_lungs")]
    for r in recs:
        r["kind"] = kind(r)
    counts: dict[str, int] = defaultdict(int)
    for r in recs:
        counts[f"{r['split']}/{r['kind']}/{r['dataset']}"] += 1
    report: dict[str, Any] = {"images": dict(sorted(counts.items())), "families": {}}
    for name in FAMILIES:
        for view in ("image", "lungs_only"):
            if view == "image" or name not in IMAGE_ONLY:
                report["families"][f"{name}@{view}"] = assess(recs, name, view)
    report["passing_gate"] = [n for n, e in report["families"].items() if e["passes_gate"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
