"""GGO models against the radiologists' Brixia zone scores, inside the same COVID-19 pictures.

    .venv/bin/python -m training.recipes.ggo_zone_check [--ggo-bundle NAME=DIR ...] [--split validation] \
        [--lung-bundle models/lungs] [--ggo-manifest runs/manifests/ggo_neg100_ieee.csv] [--out F.json]

Why: every GGO figure so far pits the GeneralBlockchain GGO pictures against normal lungs of OTHER
collections, so a model can lower its extent on normals by learning which collections are normal (the
GGO card's candidate D did, and the children of an unseen hospital kept their 34 %). The Brixia
annotations (``ieee8023_covid_cxr/annotations/brixia_public-annotations.csv``: 171 of its pictures here,
six zones each scored 0-3 by two radiologists, S and J) hold a negative no collection explains: a zone
both score 0 is clear lung in the same picture as the zones they score abnormal.

Zones come from the lungs bundle's mask (``training.lung_zones``: each lung cut into thirds of its height,
an approximation of the published anatomical lines). A zone counts as CLEAR when both raters score it 0
and as ABNORMAL when both score it >= 1; zones they disagree on are left out. Each GGO model's figures:

- ``extent``: the share of the zone's lung pixels at or above the bundle's operating threshold (what the
  pipeline would report per zone), and ``mean_prob``: the mean probability (threshold-free);
- ``auc_all``: abnormal vs clear zones, all pairs;
- ``auc_same_level``: only pairs of the same level (upper/middle/lower), so that "lower zones are more often
  diseased" earns nothing;
- ``auc_same_picture``: only pairs inside one picture, so that nothing about the picture's collection,
  device or hospital earns anything;
- ``auc_same_picture_level``: only the two lungs of one level of one picture (one diseased, one clear):
  neither the collection nor the level earns anything, but few pictures have such a pair;
- ``median_clear`` / ``median_abnormal``: the median zone value of clear and of abnormal zones.

``--det-bundle NAME=DIR`` scores a GGO detector the same way, by the share of each zone inside its boxes
(``NAME/box_cover``, at the bundle's operating threshold).

On the pictures that also have a GeneralBlockchain radiologist GGO mask, the same figures of that mask
(``with_radiologist_mask``) say how far GGO as the radiologists drew it agrees with the zone scores (which
grade any opacity, not GGO alone): the scale against which the models' figures are read.

95% CIs resample patients (all zones of a patient together), 1000 times, seeded. The baseline
(``training.recipes.ggo_baseline.lung_z``: lung intensity z-scored over the predicted lung, z > 0 is GGO,
mean z as the threshold-free score) is scored on the same zones, so that the numbers mean something.

Splits: a picture of a patient in ``--ggo-manifest`` (the GeneralBlockchain GGO set and its normals) or in
its held-out list keeps that patient's split; the other patients get their own patient-level split (seed
20260101, 50/25/25). A patient whose pictures a model trained on must not be scored: use the validation or
test split.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.lung_zones import ZONES, brixia_zones

REPO = Path(__file__).resolve().parents[2]
BRIXIA_CSV = Path("ieee8023_covid_cxr/annotations/brixia_public-annotations.csv")
SEED = 20260101
RATERS = ("S", "J")


def read_brixia(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """orig_filename -> zone letter -> (rater S, rater J)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return {
            rec["filename"]: {z: tuple(int(rec[f"{r}-{z}"]) for r in RATERS) for z in ZONES}
            for rec in csv.DictReader(fh)
        }


def zone_label(scores: tuple[int, ...]) -> int | None:
    """1 = both raters call the zone abnormal, 0 = both call it clear, None = they disagree."""
    if all(s >= 1 for s in scores):
        return 1
    if all(s == 0 for s in scores):
        return 0
    return None


def known_splits(ggo_manifest: Path | None) -> dict[str, str]:
    """patient -> split in the GGO manifest and in its held-out list (``<name>_heldout.csv``) if any."""
    from training.manifest import read_manifest

    if ggo_manifest is None:
        return {}
    paths = [ggo_manifest, ggo_manifest.with_name(ggo_manifest.stem + "_heldout.csv")]
    return {r.patient_id: r.split for p in paths if p.is_file() for r in read_manifest(p) if r.split}


def brixia_rows(data_root: Path, ggo_manifest: Path | None) -> tuple[list, dict]:
    """The frontal ieee8023 rows with a Brixia score, each with a split (see the module docstring)."""
    from training.datasets import scan_dataset
    from training.splits import assign_splits, check_leakage

    scores = read_brixia(data_root / BRIXIA_CSV)
    ieee = scan_dataset("shared_ieee8023", data_root / "ieee8023_covid_cxr")
    rows = [r for r in ieee if r.projection == "frontal" and r.image_key.split(":", 1)[1] in scores]
    known = known_splits(ggo_manifest)
    fresh = [r for r in rows if r.patient_id not in known]
    assign_splits(fresh, fractions=(0.5, 0.25, 0.25), seed=SEED, stratum=lambda rs: "none")
    for r in rows:
        if r.patient_id in known:
            r.split = known[r.patient_id]
    check_leakage(rows)
    return rows, {r.image_path: scores[r.image_key.split(":", 1)[1]] for r in rows}


def zone_scores(prob: np.ndarray, zones: np.ndarray, threshold: float) -> dict[str, tuple[float, float]]:
    """zone letter -> (extent: share of the zone's pixels >= threshold, mean probability)."""
    out = {}
    for k, letter in enumerate(ZONES, start=1):
        inside = zones == k
        if inside.any():
            values = prob[inside]
            out[letter] = (float((values >= threshold).mean()), float(values.mean()))
    return out


def grouped_auc(values: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float | None:
    """P(abnormal zone scores above a clear zone of the same group) over all such pairs (ties count half)."""
    auc, _ = grouped_auc_pairs(values, labels, groups)
    return auc


def grouped_auc_pairs(values: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float | None, int]:
    """:func:`grouped_auc` and the number of (abnormal, clear) pairs it averages over: each group's
    :func:`training.metrics.roc_auc`, weighted by its pairs."""
    from training.metrics import roc_auc

    wins = pairs = 0.0
    for g in np.unique(groups):
        inside = groups == g
        y, v = labels[inside], values[inside]
        n_pos, n_neg = int(y.sum()), int((1 - y).sum())
        if n_pos and n_neg:
            wins += roc_auc(y, v) * n_pos * n_neg
            pairs += n_pos * n_neg
    return (wins / pairs if pairs else None), int(pairs)


PAIRINGS = {"auc_all": None, "auc_same_level": "level", "auc_same_picture": "picture",
            "auc_same_picture_level": "picture_level"}


def figures(zones: list[dict], key: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUCs (with patient-bootstrap CIs) and median zone values of one score (``key``) over the zones.

    ``zones``: dicts with patient, picture, level (0-2), label (0/1) and the score under ``key``.
    """
    values = np.array([z[key] for z in zones], dtype=np.float64)
    labels = np.array([z["label"] for z in zones], dtype=np.int64)
    patients = sorted({z["patient"] for z in zones})
    patient = np.array([patients.index(z["patient"]) for z in zones])
    pictures = sorted({z["picture"] for z in zones})
    group_of = {
        "level": np.array([z["level"] for z in zones]),
        "picture": np.array([pictures.index(z["picture"]) for z in zones]),
        "picture_level": np.array([3 * pictures.index(z["picture"]) + z["level"] for z in zones]),
        None: np.zeros(len(zones), dtype=np.int64),
    }
    members = [np.flatnonzero(patient == i) for i in range(len(patients))]
    res: dict = {"n_clear": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
                 "median_clear": round(float(np.median(values[labels == 0])), 4),
                 "median_abnormal": round(float(np.median(values[labels == 1])), 4)}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(patients), len(patients)) for _ in range(n_boot)]
    for name, by in PAIRINGS.items():
        value, n_pairs = grouped_auc_pairs(values, labels, group_of[by])
        res[name] = None if value is None else round(value, 4)
        res[name + "_pairs"] = n_pairs
        if value is None:
            continue
        boot = []
        for idx in draws:
            take = np.concatenate([members[i] for i in idx])
            groups = group_of[by][take]
            if by in ("picture", "picture_level"):  # a patient drawn twice is two: keep the copies apart
                copy = np.concatenate([np.full(members[i].size, j) for j, i in enumerate(idx)])
                groups = groups * len(patients) + copy
            v = grouped_auc(values[take], labels[take], groups)
            if v is not None:
                boot.append(v)
        res[name + "_ci95"] = [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])]
    return res


def collect_zones(rows: list, scores: dict, lungs: dict, score_picture: Callable) -> list[dict]:
    """One dict per labelled zone of every picture with a lung mask; ``score_picture(row, lung, zones)``
    returns zone letter -> {score name: value}."""
    out = []
    for r in rows:
        lung = lungs.get(r.image_path)
        if lung is None:
            continue
        zones = brixia_zones(lung)
        values = score_picture(r, lung, zones)
        for k, letter in enumerate(ZONES):
            label = zone_label(scores[r.image_path][letter])
            if label is None or letter not in values:
                continue
            out.append({"patient": r.patient_id, "picture": r.image_path, "level": k % 3, "zone": letter,
                        "label": label, **values[letter]})
    return out


def clear_zone_label(
    lung: np.ndarray, raters: dict[str, tuple[int, int]], margin: float
) -> np.ndarray | None:
    """The lung pixels of the zones both raters score 0, at least ``margin`` x the lung height away from
    every other lung pixel (the zone lines are approximate); None when no zone is clear."""
    from scipy import ndimage

    zones = brixia_zones(lung)
    clear_ids = [k for k, z in enumerate(ZONES, start=1) if zone_label(raters[z]) == 0]
    if not clear_ids:
        return None
    clear = np.isin(zones, clear_ids)
    other = lung & ~clear
    if other.any():
        rows = np.flatnonzero(lung.any(axis=1))
        clear &= ndimage.distance_transform_edt(~other) > margin * (rows[-1] + 1 - rows[0])
    return clear if clear.any() else None


def write_weak_manifest(
    data_root: Path, base: Path, out: Path, lung_bundle: Path, margin: float, cache_dir: Path
) -> list:
    """``base`` plus a weakly labelled row for every TRAIN-split Brixia picture (not already in ``base``)
    with a clear zone: an all-zero GGO mask, labelled only on its clear zones (``ggo_labelled``)."""
    from PIL import Image

    from training.cache import ArrayCache
    from training.evaluate import predict_lung_masks
    from training.manifest import read_manifest, write_manifest
    from training.splits import check_leakage

    rows = read_manifest(base)
    in_base = {r.image_key for r in rows if r.image_key} | {r.image_path for r in rows}
    brixia, scores = brixia_rows(data_root, base)
    train = [r for r in brixia
             if r.split == "train" and r.image_key not in in_base and r.image_path not in in_base]
    lungs = predict_lung_masks(lung_bundle, train, ArrayCache(cache_dir))
    mask_dir = (out.parent / "brixia_zone_masks").resolve()
    mask_dir.mkdir(parents=True, exist_ok=True)
    weak = []
    for r in train:
        lung = lungs.get(r.image_path)
        label = None if lung is None else clear_zone_label(lung, scores[r.image_path], margin)
        if label is None:
            continue
        stem = Path(r.image_path).stem
        empty, labelled = mask_dir / f"{stem}__ggo_empty.png", mask_dir / f"{stem}__labelled.png"
        Image.fromarray(np.zeros(label.shape, dtype=np.uint8)).save(empty)
        Image.fromarray(label.astype(np.uint8) * 255).save(labelled)
        r.ggo_mask, r.ggo_labelled = str(empty), str(labelled)
        weak.append(r)
    merged = rows + weak
    check_leakage(merged)
    write_manifest(merged, out)
    return weak


def radiologist_mask(gb_row, shape: tuple[int, int]) -> np.ndarray | None:  # noqa: ANN001 - ManifestRow
    """The GeneralBlockchain radiologist GGO mask of the same picture on this picture's grid (None when
    there is none, or when the two files' aspect ratios differ by more than 2 %, i.e. another crop)."""
    from PIL import Image

    from training.cache import load_mask

    if gb_row is None:
        return None
    mask = load_mask(gb_row.ggo_mask)
    if abs(mask.shape[0] / mask.shape[1] - shape[0] / shape[1]) > 0.02 * shape[0] / shape[1]:
        return None
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--ggo-bundle", action="append", default=[],
                    help="NAME=DIR, repeatable (default: shipped=models/ggo_segmentation)")
    ap.add_argument("--det-bundle", action="append", default=[],
                    help="NAME=DIR of a GGO detection bundle, repeatable: scored by the share of each zone "
                         "inside its boxes (operating threshold)")
    ap.add_argument("--lung-bundle", type=Path, default=REPO / "models" / "lungs")
    ap.add_argument("--ggo-manifest", type=Path, default=REPO / "runs" / "manifests" / "ggo_neg100_ieee.csv",
                    help="GGO training manifest whose patients keep their split ('' = none)")
    ap.add_argument("--split", default="validation", help="validation | test | train | '' (all)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "cache", help="lung-mask cache")
    ap.add_argument("--write-weak-manifest", type=Path,
                    help="instead of scoring: write --ggo-manifest + the weakly labelled TRAIN Brixia rows")
    ap.add_argument("--brighter-than-lung", action="store_true",
                    help="also score each mask cut to the lung pixels brighter than their lung's mean")
    ap.add_argument("--margin", type=float, default=0.05,
                    help="clear-zone pixels kept this share of the lung height from other zones")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from pipelines.bundle import load_bundle, read_metadata
    from pipelines.image import load_image
    from pipelines.tasks.ggo import GgoDetector, GgoSegmenter
    from training.cache import ArrayCache
    from training.evaluate import predict_lung_masks
    from training.manifest import read_manifest
    from training.recipes.ggo_baseline import lung_z
    from training.recipes.ggo_normal_extent import boxes_mask

    manifest = args.ggo_manifest if str(args.ggo_manifest) not in ("", ".") else None
    if args.write_weak_manifest:
        if manifest is None:
            ap.error("--write-weak-manifest needs --ggo-manifest")
        weak = write_weak_manifest(args.data_root, manifest, args.write_weak_manifest, args.lung_bundle,
                                   args.margin, args.cache_dir)
        print(f"{len(weak)} weakly labelled train rows added: {args.write_weak_manifest}")
        return 0
    rows, scores = brixia_rows(args.data_root, manifest)
    rows = [r for r in rows if not args.split or r.split == args.split]
    lungs = predict_lung_masks(args.lung_bundle, rows, ArrayCache(args.cache_dir))
    shipped = {"shipped": str(REPO / "models" / "ggo_segmentation")}
    bundles = dict(b.split("=", 1) for b in args.ggo_bundle) or shipped
    segmenters = {n: (GgoSegmenter(load_bundle(Path(d), "ggo_segmentation")),
                      float(read_metadata(Path(d)).operating_threshold)) for n, d in bundles.items()}
    det_bundles = dict(b.split("=", 1) for b in args.det_bundle)
    detectors = {n: GgoDetector(load_bundle(Path(d), "ggo_detection")) for n, d in det_bundles.items()}

    radiologist = {r.image_key: r for r in read_manifest(manifest) if r.dataset == "generalblockchain"
                   and r.ggo_mask} if manifest is not None else {}

    def score_picture(row, lung: np.ndarray, zones: np.ndarray) -> dict:  # noqa: ANN001 - ManifestRow
        src = load_image(row.image_path)
        values: dict[str, dict] = {z: {} for z in ZONES}
        truth = radiologist_mask(radiologist.get(row.image_key), src.pixels.shape)
        if truth is not None:
            for letter, (extent, _) in zone_scores(truth.astype(np.float32), zones, 0.5).items():
                values[letter]["radiologist/extent"] = extent
        z = lung_z(src.pixels, lung)
        for letter, (extent, mean) in zone_scores(z, zones, 0.0).items():
            values[letter].update({"baseline/extent": extent, "baseline/mean_prob": mean})
        for name, det in detectors.items():  # share of the zone inside a box at the operating threshold
            covered = boxes_mask(src.pixels.shape, det.predict([src])[0]).astype(np.float32)
            for letter, (cover, _) in zone_scores(covered, zones, 0.5).items():
                values[letter][f"{name}/box_cover"] = cover
        for name, (seg, thr) in segmenters.items():
            _, prob = seg.predict([src], [lung])[0]
            for letter, (extent, mean) in zone_scores(prob, zones, thr).items():
                values[letter].update({f"{name}/extent": extent, f"{name}/mean_prob": mean})
            if args.brighter_than_lung:  # candidate I: the mask cut to lung pixels above their lung's mean
                cut = np.where(z > 0, prob, 0.0)
                for letter, (extent, _) in zone_scores(cut, zones, thr).items():
                    values[letter][f"{name}+brighter/extent"] = extent
        return values

    zones = collect_zones(rows, scores, lungs, score_picture)
    keys = [f"{n}/{k}" for n in ["baseline", *segmenters] for k in ("extent", "mean_prob")]
    keys += [f"{n}+brighter/extent" for n in segmenters] if args.brighter_than_lung else []
    keys += [f"{n}/box_cover" for n in detectors]
    result = {
        "split": args.split, "lung_bundle": str(args.lung_bundle), "ggo_bundles": bundles,
        "det_bundles": det_bundles, "ggo_manifest": str(manifest),
        "pictures": len({z["picture"] for z in zones}), "patients": len({z["patient"] for z in zones}),
        "figures": {k: figures(zones, k, args.n_boot) for k in keys},
    }
    marked = [z for z in zones if "radiologist/extent" in z]
    if marked:  # the GeneralBlockchain pictures: how far the radiologists' own GGO masks agree with the zones
        result["with_radiologist_mask"] = {
            "pictures": len({z["picture"] for z in marked}),
            "figures": {k: figures(marked, k, args.n_boot) for k in ["radiologist/extent", *keys]},
        }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
