"""The simple GGO baseline that gives the shipped GGO models' numbers a meaning.

    .venv/bin/python -m training.recipes.ggo_baseline runs/ggo-unet/manifest.csv \
        [--detection-bundle models/ggo_detection] [--out runs/ggo_baseline.json]

Baseline ("thresholded lung-region intensity"): inside the radiologist's lung mask (left + right
lung of the GeneralBlockchain set, i.e. a mask the networks are NOT given), blur the image
(Gaussian, sigma = 0.4% of the image side), z-score it over the lung pixels and call GGO every lung
pixel with z > t. ``t`` is chosen on the train + validation rows (max mean Dice), the test rows are
only scored. Boxes for the detection baseline are the 8-connected components of that mask (the
same rule that turns the truth masks into truth boxes), confidence = sigmoid(mean z of the
component). Everything is on each image's own pixel grid, as the model metrics are.

Reports Dice (mean, bootstrap 95% CI over images) and mAP50 / mAP50-95 with an image-bootstrap
95% CI; with ``--detection-bundle`` the same image-bootstrap CI for the YOLO bundle's mAP.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipelines.bundle import load_bundle
from training.cache import load_source
from training.evaluate import detection_predictions, mask_boxes, truth_boxes
from training.manifest import read_manifest
from training.metrics import detection_report, dice_iou, segmentation_report

REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger("ggo_baseline")
THRESHOLDS = np.round(np.arange(-0.5, 3.01, 0.25), 2)


def lung_z(pixels: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Blurred intensity, z-scored over the lung pixels (z = 0 outside the lungs)."""
    blurred = ndimage.gaussian_filter(pixels.astype(np.float32), sigma=0.004 * max(pixels.shape))
    values = blurred[lungs]
    z = (blurred - values.mean()) / (values.std() + 1e-6)
    return np.where(lungs, z, 0.0).astype(np.float32)


def baseline_boxes(pred: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 5) boxes + confidence from the connected components of a baseline mask."""
    boxes = mask_boxes(pred)
    out = []
    for x0, y0, x1, y1 in boxes:
        region = pred[int(y0) : int(y1), int(x0) : int(x1)]
        conf = 1.0 / (1.0 + np.exp(-float(z[int(y0) : int(y1), int(x0) : int(x1)][region].mean())))
        out.append([x0, y0, x1, y1, conf])
    return np.asarray(out, dtype=np.float64).reshape(-1, 5)


def bootstrap_detection(
    preds: list[np.ndarray], truths: list[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """mAP50 and mAP50-95 with percentile CIs from resampling images."""
    report = detection_report(preds, truths)
    rng = np.random.default_rng(seed)
    m50, m5095 = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(preds), len(preds))
        r = detection_report([preds[i] for i in idx], [truths[i] for i in idx])
        m50.append(r["map50"])
        m5095.append(r["map50_95"])
    report["map50_ci95"] = [float(x) for x in np.nanquantile(m50, [0.025, 0.975])]
    report["map50_95_ci95"] = [float(x) for x in np.nanquantile(m5095, [0.025, 0.975])]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="split manifest of the GGO run (runs/<run>/manifest.csv)")
    parser.add_argument("--detection-bundle", type=Path, help="also bootstrap the mAP of this YOLO bundle")
    parser.add_argument("--out", type=Path, default=Path("runs/ggo_baseline.json"))
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    rows = [r for r in read_manifest(args.manifest) if r.ggo_mask and r.lung_mask]
    data = []
    for row in rows:
        src = load_source(row)
        z = lung_z(src.pixels, src.lung_mask)
        data.append((row, z, src.ggo_mask))
    tune = [d for d in data if d[0].split in ("train", "validation")]
    test = [d for d in data if d[0].split == "test"]
    scores = {float(t): float(np.mean([dice_iou(z > t, g)[0] for _, z, g in tune])) for t in THRESHOLDS}
    t_best = max(scores, key=scores.get)
    log.info("baseline threshold z > %.2f (train+validation Dice %.4f)", t_best, scores[t_best])
    seg = segmentation_report([(z > t_best, g) for _, z, g in test], n_boot=args.n_boot)
    seg.pop("dice_per_image", None)
    det = bootstrap_detection(
        [baseline_boxes(z > t_best, z) for _, z, _ in test],
        [truth_boxes(r) for r, _, _ in test],
        n_boot=args.n_boot,
    )
    result: dict[str, Any] = {
        "manifest": str(args.manifest),
        "n_test": len(test),
        "threshold_z": t_best,
        "threshold_choice": "max mean Dice on train+validation over z in -0.5..3.0",
        "tune_dice_by_threshold": scores,
        "segmentation_test": seg,
        "detection_test": det,
    }
    if args.detection_bundle:
        bundle = load_bundle(args.detection_bundle, "ggo_detection")
        test_rows = [r for r, _, _ in test]
        preds = detection_predictions(bundle.network, test_rows, bundle.metadata.input.size)
        result["model_detection_test"] = bootstrap_detection(
            preds, [truth_boxes(r) for r in test_rows], n_boot=args.n_boot
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "tune_dice_by_threshold"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
