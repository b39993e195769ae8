"""GGO extent the pipeline reports on normal lungs (and on COVID-19 pictures), and GGO Dice, per dataset.

    .venv/bin/python -m training.recipes.ggo_normal_extent MANIFEST [MANIFEST ...] --split test \
        [--ggo-bundle models/ggo_segmentation] [--lung-bundle models/lungs] [--thresholds 0.5,0.6] \
        [--out extent.json]

Every image goes through the pipeline's own code: ``LungSegmenter`` (lungs bundle) then
``GgoSegmenter`` (GGO bundle, its operating threshold unless ``--thresholds`` lists others), extent =
GGO area inside the lungs / lung area x 100 (``pipelines.tasks.ggo.ggo_extent_percent``). Rows whose
GGO mask has foreground also get Dice on the source grid; rows with an empty GGO mask or none count
as normal (extent is reported for every row). Figures per dataset (x COVID label; "all normals" pools
the normal rows): n, median, 90th percentile, IQR, mean extent, share of images with extent 0 and with
extent < 1 %. ``--exclude-seen`` is meant for the held-out list (it drops patients by id).

Use it on the VALIDATION split to choose, on the held-out list (``ggo_manifest --heldout``) and the
test split only to report.

``--within-boxes`` (session 4, candidate G): the mask is cut to the union of the GGO detector's boxes
(``--det-bundle``, its operating threshold), i.e. GGO is reported only where both GGO models agree.
Rule, committed before G was measured: the pipeline adopts G iff, on the VALIDATION split of
``runs/manifests/ggo_neg100_ieee.csv`` (14 GeneralBlockchain GGO images + 33 normals), (a) the mean
Dice on the 14 GGO images is >= 0.428 (the ungated mask's 0.458 - 0.03, the GGO card's rule) and
(b) the median extent on the 33 normals is <= 5 % and below the ungated mask's, both measured in the
same run with the shipped lungs, GGO segmentation and GGO detection bundles. OUTCOME: G failed (a).

``--gate-by-boxes`` (session 8, candidate H): an image-level gate instead of G's pixel-level cut. The mask
is reported whole when the detector finds at least one GGO box on the image, and not at all (extent 0)
when it finds none: the detector decides WHETHER there is GGO, the segmenter WHERE and how much. Why: G
lost Dice because the detector's boxes cover only part of each opacity, but it found no box on most
normals. Rule, committed before H was measured: the pipeline adopts H iff, in one run on the VALIDATION
split of ``runs/manifests/ggo_neg100_ieee.csv`` with the shipped lungs, GGO segmentation and GGO detection
bundles, (a) the mean Dice on the 14 GGO images is >= 0.428 and (b) the median extent on the 33 normals is
<= 5 % and below the ungated mask's (the same bars as G and the retraining candidates). Report only, after
the decision: the test split and the held-out list (OpenIST, NIH, Kermany children, ieee8023 COVID-19).
OUTCOME (session 8, lungs 1.3.0): Dice on the 14 GGO images 0.335 (ungated 0.458; needed 0.428), median extent
on the 33 normals 0.0 % (ungated 32.7 %; 67 % of normals with no box). H fails (a): the detector finds no box
on several GGO images, and those lose their whole mask. Not adopted.

``--brighter-than-lung`` (session 10, candidate I): the mask is cut to the lung pixels brighter than the
mean of their lung (``ggo_baseline.lung_z`` > 0 over the lungs bundle's mask). Why: the zone check
(``ggo_zone_check``) found the intensity baseline ranks a picture's diseased zones above its clear ones
better than every U-Net (same picture 0.93 vs 0.88 on validation), and candidate D, the U-Net that lowered
the extent on normals most while keeping Dice, lost most of that ranking (0.68). Candidate I is D's bundle
(retrained in session 10 from ``ggo_segmentation_ft_pi.toml``) with this cut, at D's own threshold. Rule,
committed before I was measured: the pipeline adopts I iff, on the VALIDATION split of
``runs/manifests/ggo_neg100_ieee.csv`` with the shipped lungs bundle, (a) the mean Dice on the 14 GGO images
is >= 0.428, (b) the median extent on the 33 normals is <= 5 % and below the shipped mask's, and (c) its
same-picture zone AUC (``ggo_zone_check --split validation --brighter-than-lung``) is not below the shipped
mask's (0.882). The cut applied to the shipped bundle and to candidate Z is reported, not a candidate.
Report only, after the decision: test split, held-out list. OUTCOME (session 10): Dice on the 14 GGO images
0.261 (uncut 0.440; needed 0.428), median extent on the 33 normals 4.4 % (uncut 11.2 %), same-picture zone AUC
0.882 (shipped 0.882). I fails (a): GGO pixels darker than their lung's mean (a lung mostly GGO has its mean
inside the GGO) are cut away. Not adopted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipelines.results import Box

REPO = Path(__file__).resolve().parents[2]


def summarise(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "median": round(float(np.median(v)), 2),
        "p90": round(float(np.percentile(v, 90)), 2),
        "iqr": [round(float(np.percentile(v, 25)), 2), round(float(np.percentile(v, 75)), 2)],
        "mean": round(float(v.mean()), 2),
        "share_zero": round(float((v == 0).mean()), 3),
        "share_below_1pct": round(float((v < 1).mean()), 3),
    }


def boxes_mask(shape: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    """Boolean union of boxes on a source grid: pixels whose centre lies inside a box (x1/y1 exclusive)."""
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    for b in boxes:
        y0, y1 = max(0, int(np.ceil(b.y0 - 0.5))), min(h, int(np.ceil(b.y1 - 0.5)))
        x0, x1 = max(0, int(np.ceil(b.x0 - 0.5))), min(w, int(np.ceil(b.x1 - 0.5)))
        mask[y0:y1, x0:x1] = True
    return mask


def collect(manifests: list[Path], split: str, ggo_bundle: Path, lung_bundle: Path,
            exclude: set[str] | None = None, det_bundle: Path | None = None,
            brighter: bool = False) -> list[dict]:
    """Per image: dataset, covid, lung mask, GGO probability map (source grid), truth (or None), the union
    of the detector's boxes when ``det_bundle`` is given, and with ``brighter`` the lung pixels brighter
    than their lung's mean."""
    from pipelines.bundle import load_bundle
    from pipelines.image import load_image
    from pipelines.tasks.ggo import GgoDetector, GgoSegmenter
    from training.cache import ArrayCache, load_source
    from training.evaluate import predict_lung_masks
    from training.manifest import read_manifest
    from training.recipes.ggo_baseline import lung_z

    rows = [r for m in manifests for r in read_manifest(m) if not split or r.split == split]
    rows = [r for r in rows if r.patient_id not in (exclude or set())]
    lungs = predict_lung_masks(lung_bundle, rows, ArrayCache(REPO / "runs" / "cache"))
    seg = GgoSegmenter(load_bundle(ggo_bundle, "ggo_segmentation"))
    det = GgoDetector(load_bundle(det_bundle, "ggo_detection")) if det_bundle else None
    out = []
    for r in rows:
        lung = lungs.get(r.image_path)
        if lung is None:
            continue  # the pipeline reports no extent without a lung mask
        src = load_image(r.image_path)
        _, prob = seg.predict([src], [lung])[0]
        truth = load_source(r).ggo_mask if r.ggo_mask else None
        boxes = boxes_mask(prob.shape, det.predict([src])[0]) if det else None
        out.append({"path": r.image_path, "dataset": r.dataset, "covid": r.covid, "lung": lung,
                    "prob": prob, "truth": truth if truth is not None and truth.any() else None,
                    "boxes": boxes, "brighter": lung_z(src.pixels, lung) > 0 if brighter else None})
    return out


def report(
    items: list[dict],
    threshold: float,
    min_extent: float = 0.0,
    within_boxes: bool = False,
    gate_by_boxes: bool = False,
    brighter_than_lung: bool = False,
) -> dict:
    """Figures at one mask threshold; ``min_extent`` > 0: an extent below it is reported as 0 (gate);
    ``within_boxes``: the mask is cut to the detector's boxes first; ``gate_by_boxes``: the mask is
    dropped on an image where the detector found no box; ``brighter_than_lung``: the mask is cut to the
    lung pixels brighter than their lung's mean."""
    from pipelines.tasks.ggo import ggo_extent_percent
    from training.metrics import dice_iou

    extent: dict[str, list[float]] = defaultdict(list)
    dice: dict[str, list[float]] = defaultdict(list)
    for it in items:
        mask = it["prob"] >= threshold
        if within_boxes:
            mask = mask & it["boxes"]
        if gate_by_boxes and not it["boxes"].any():
            mask = np.zeros_like(mask)
        if brighter_than_lung:
            mask = mask & it["brighter"]
        e = ggo_extent_percent(mask, it["lung"]) or 0.0
        if e < min_extent:
            mask, e = np.zeros_like(mask), 0.0
        group = it["dataset"] + ("" if it["truth"] is not None or it["covid"] != "1" else " covid")
        if it["truth"] is not None:
            dice[group].append(dice_iou(mask, it["truth"])[0])
        extent[group].append(e)
        if it["truth"] is None and it["covid"] != "1":
            extent["all normals"].append(e)
    res: dict = {"threshold": threshold, "min_extent_pct": min_extent, "within_boxes": within_boxes,
                 "gate_by_boxes": gate_by_boxes, "brighter_than_lung": brighter_than_lung,
                 "extent_pct": {}, "dice": {}}
    for g, v in sorted(extent.items()):
        res["extent_pct"][g] = summarise(v)
    for g, v in sorted(dice.items()):
        res["dice"][g] = {"n": len(v), "mean": round(float(np.mean(v)), 4)}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", type=Path, nargs="+")
    ap.add_argument("--split", default="test", help="rows of this split ('' = all rows)")
    ap.add_argument("--ggo-bundle", type=Path, default=REPO / "models" / "ggo_segmentation")
    ap.add_argument("--lung-bundle", type=Path, default=REPO / "models" / "lungs")
    ap.add_argument("--thresholds", default="", help="comma-separated; default: the bundle's own")
    ap.add_argument("--min-extents", default="0", help="comma-separated gate values in %% of lung")
    ap.add_argument("--exclude-seen", type=Path, action="append", default=[],
                    help="drop patients in this manifest's train/validation splits (seen by an earlier "
                         "model, e.g. the start weights of a fine-tuned one); repeatable")
    ap.add_argument("--within-boxes", action="store_true",
                    help="also report every setting with the mask cut to the detector's boxes")
    ap.add_argument("--gate-by-boxes", action="store_true",
                    help="also report every setting with the mask dropped where the detector finds no box")
    ap.add_argument("--brighter-than-lung", action="store_true",
                    help="also report every setting with the mask cut to lung pixels above their lung's mean")
    ap.add_argument("--det-bundle", type=Path, default=REPO / "models" / "ggo_detection")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from pipelines.bundle import read_metadata
    from training.manifest import read_manifest

    exclude = {r.patient_id for m in args.exclude_seen for r in read_manifest(m)
               if r.split in ("train", "validation")}
    items = collect(args.manifests, args.split, args.ggo_bundle, args.lung_bundle, exclude,
                    args.det_bundle if args.within_boxes or args.gate_by_boxes else None,
                    args.brighter_than_lung)
    own = float(read_metadata(args.ggo_bundle).operating_threshold)
    thresholds = [float(t) for t in args.thresholds.split(",") if t] or [own]
    gates = [float(g) for g in args.min_extents.split(",") if g]
    modes = ([(False, False, False)] + [(True, False, False)] * args.within_boxes
             + [(False, True, False)] * args.gate_by_boxes + [(False, False, True)] * args.brighter_than_lung)
    results = [report(items, t, g, boxed, gated, brighter)
               for boxed, gated, brighter in modes for t in thresholds for g in gates]
    text = json.dumps({"ggo_bundle": str(args.ggo_bundle), "lung_bundle": str(args.lung_bundle),
                       "manifests": [str(m) for m in args.manifests], "split": args.split,
                       "exclude_seen": [str(m) for m in args.exclude_seen],
                       "n_images": len(items),
                       "bundle_threshold": own, "results": results}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
