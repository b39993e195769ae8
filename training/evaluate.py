"""Honest evaluation of a model (in memory or as an exported bundle) on one manifest split.

Classification: AUC with bootstrap CI, the confusion-matrix metrics at the bundle's operating
threshold (chosen on validation at training time, never here), Brier score and reliability
table. COVID additionally: per-source AUC (a within-source AUC near 0.5 means the model tells
hospitals apart, not disease), and the paper's shortcut check on the same images with the lungs
removed (lung mask inverted: lung pixels black) and with only the lungs shown. Segmentation:
Dice/IoU per image on the SOURCE grid (the grid the SEG is written on), mean with CI.
Detection: mAP50 and mAP50-95 on source-grid boxes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pipelines.bundle import input_lungs_dir, load_bundle, read_metadata
from pipelines.image import load_image
from pipelines.preprocess import InputSpec, prepare_input, prepare_yolo_image
from pipelines.runtime import foreground_probability, positive_probability
from pipelines.tasks.lungs import LungSegmenter, postprocess_lung_mask
from training.cache import ArrayCache, classification_input, load_mask, load_source, rows_with_input
from training.manifest import ManifestRow, read_manifest
from training.metrics import (
    binary_classification_report,
    box_iou,
    detection_report,
    roc_auc,
    segmentation_report,
)
from training.tasks import TASK_SPECS

log = logging.getLogger(__name__)


def classification_scores(
    net: Any,
    rows: Sequence[ManifestRow],
    cache: ArrayCache,
    in_spec: dict,
    *,
    variant: str = "normal",
    lung_masks: dict[str, np.ndarray] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """P(positive label) per row, through the pipeline's own preprocessing and probability rule."""
    lung_masks = lung_masks or {}
    out: list[float] = []
    net.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = [
                np.array(
                    classification_input(
                        cache, r, in_spec, variant=variant, lung_mask=lung_masks.get(r.image_path)
                    )
                )
                for r in rows[start : start + batch_size]
            ]
            x = torch.from_numpy(np.stack(batch).astype(np.float32)).to(device)
            out += positive_probability(net(x)).cpu().tolist()
    return np.asarray(out, dtype=np.float64)


def _auc_or_none(y: np.ndarray, s: np.ndarray) -> float | None:
    return roc_auc(y, s) if len(set(y.tolist())) == 2 else None


def evaluate_classification(
    task: str,
    net: Any,
    rows: Sequence[ManifestRow],
    cache: ArrayCache,
    in_spec: dict,
    threshold: float,
    *,
    labels_of: Any,
    lung_masks: dict[str, np.ndarray] | None = None,
    device: str = "cpu",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    lung_masks = lung_masks or {}
    usable = rows_with_input(rows, in_spec, lung_masks)
    y = np.array([labels_of(r) for r in usable], dtype=np.int64)
    scores = classification_scores(net, usable, cache, in_spec, lung_masks=lung_masks, device=device)
    report = binary_classification_report(y, scores, threshold, n_boot=n_boot, seed=seed)
    report["skipped_without_lung_mask"] = len(rows) - len(usable)
    if task != "covid":
        return report
    per_source: dict[str, Any] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(usable):
        groups[r.source].append(i)
    for source, idx in sorted(groups.items()):
        ys, ss = y[idx], scores[idx]
        per_source[source] = {"n": len(idx), "positives": int(ys.sum()), "auc": _auc_or_none(ys, ss)}
    report["per_source"] = per_source
    report["shortcut_check"] = shortcut_check(net, usable, y, cache, in_spec, lung_masks, device)
    return report


def shortcut_check(
    net: Any,
    rows: Sequence[ManifestRow],
    y: np.ndarray,
    cache: ArrayCache,
    in_spec: dict,
    lung_masks: dict[str, np.ndarray],
    device: str,
) -> dict[str, Any]:
    """AUC on the images with a lung mask: as is, lungs removed, lungs only (the paper's check)."""
    idx = [i for i, r in enumerate(rows) if r.lung_mask or r.image_path in lung_masks]
    result: dict[str, Any] = {
        "n_with_lung_mask": len(idx),
        "interpretation": "a model still scoring well with the lungs removed reads "
        "something other than the lungs (source, text, devices)",
    }
    if len(set(y[idx].tolist())) < 2:
        result["note"] = "needs both classes among images with a lung mask"
        return result
    sub, ys = [rows[i] for i in idx], y[idx]
    result["auc_same_images"] = roc_auc(
        ys, classification_scores(net, sub, cache, in_spec, lung_masks=lung_masks, device=device)
    )
    if in_spec["mode"] == "lungs_only":
        result["auc_lungs_removed"] = None
        result["note"] = (
            "lungs_only model: its input never holds non-lung pixels, so the lungs-removed "
            "input is empty by construction"
        )
    else:
        result["auc_lungs_removed"] = roc_auc(
            ys,
            classification_scores(
                net, sub, cache, in_spec, variant="lungs_removed", lung_masks=lung_masks, device=device
            ),
        )
    result["auc_lungs_only"] = roc_auc(
        ys,
        classification_scores(
            net, sub, cache, in_spec, variant="lungs_only_view", lung_masks=lung_masks, device=device
        ),
    )
    return result


def segmentation_source_pairs(
    net: Any,
    rows: Sequence[ManifestRow],
    in_spec: dict,
    target: str,
    threshold: float,
    *,
    device: str = "cpu",
    postprocess: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) boolean masks on each image's own grid."""
    spec = InputSpec.from_dict(in_spec)
    pairs = []
    net.eval()
    for row in rows:
        src = load_source(row)
        truth = src.lung_mask if target == "lungs" else src.ggo_mask
        if truth is None:
            continue
        prepared = prepare_input(src.pixels, spec)
        with torch.no_grad():
            prob = foreground_probability(net(torch.from_numpy(prepared.array[None]).to(device)))[0].cpu()
        pred = prepared.geometry.mask_to_source(prob, threshold)
        if postprocess:
            pred = postprocess_lung_mask(pred)
        pairs.append((pred, truth))
    return pairs


def mask_boxes(mask: np.ndarray, *, min_area_fraction: float = 0.0005) -> np.ndarray:
    """Boxes (N, 4) x0, y0, x1, y1 of the 8-connected components of a mask (detection truth from masks).

    Components smaller than ``min_area_fraction`` of the image are annotation specks, not findings.
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    min_area = min_area_fraction * mask.size
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or int((labels[sl] == k).sum()) < min_area:
            continue
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def truth_boxes(row: ManifestRow) -> np.ndarray:
    if row.ggo_mask:
        return mask_boxes(load_mask(row.ggo_mask))
    return np.asarray([[b.x0, b.y0, b.x1, b.y1] for b in row.boxes], dtype=np.float64).reshape(-1, 4)


def detection_predictions(
    yolo: Any, rows: Sequence[ManifestRow], imgsz: int, *, conf: float = 0.001, device: str = "cpu"
) -> list[np.ndarray]:
    """(N, 5) source-grid boxes + confidence per row, from the pipeline's YOLO input."""
    out = []
    for row in rows:
        image, geometry = prepare_yolo_image(load_image(row.image_path).pixels, imgsz)
        result = yolo.predict(image, imgsz=imgsz, conf=conf, device=device, verbose=False)[0]
        xyxy = result.boxes.xyxy.cpu().numpy() if len(result.boxes) else np.zeros((0, 4))
        confs = result.boxes.conf.cpu().numpy() if len(result.boxes) else np.zeros((0,))
        out.append(np.concatenate([geometry.boxes_to_source(xyxy), confs[:, None]], axis=1))
    return out


def evaluate_detection(
    yolo: Any, rows: Sequence[ManifestRow], imgsz: int, threshold: float, device: str = "cpu"
) -> dict[str, Any]:
    preds = detection_predictions(yolo, rows, imgsz, device=device)
    truths = [truth_boxes(r) for r in rows]
    report = detection_report(preds, truths)
    kept = [p[p[:, 4] >= threshold] for p in preds]
    report["operating_threshold"] = threshold
    report["at_threshold"] = box_f1(kept, truths)
    return report


def box_f1(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], iou: float = 0.5) -> dict[str, Any]:
    """Precision/recall/F1 of boxes (IoU >= ``iou``, greedy by confidence) over a set of images."""
    tp = fp = fn = 0
    for p, t in zip(preds, truths, strict=True):
        order = np.argsort(-p[:, 4]) if len(p) else np.zeros(0, dtype=int)
        taken = np.zeros(len(t), dtype=bool)
        ious = box_iou(p[order, :4], t) if len(t) and len(p) else np.zeros((len(p), len(t)))
        for k in range(len(order)):
            cand = np.where(taken, -1.0, ious[k]) if len(t) else np.zeros(0)
            if len(cand) and cand.max() >= iou:
                taken[int(cand.argmax())] = True
                tp += 1
            else:
                fp += 1
        fn += int((~taken).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def predict_lung_masks(
    bundle_dir: Path, rows: Sequence[ManifestRow], cache: ArrayCache
) -> dict[str, np.ndarray]:
    """Lung masks from a lungs bundle (as the pipeline computes them), cached per image and bundle."""
    meta = read_metadata(bundle_dir)
    segmenter: LungSegmenter | None = None
    masks: dict[str, np.ndarray] = {}
    for row in rows:
        key = hashlib.sha256(
            f"lungmask|{row.content_sha256}|{meta.weights.get('sha256')}".encode()
        ).hexdigest()
        hit = cache.get(key, ("lungs",))
        if hit is not None:
            masks[row.image_path] = np.asarray(hit[0], dtype=bool)
            continue
        if segmenter is None:
            segmenter = LungSegmenter(load_bundle(bundle_dir, "lungs"))
        mask = segmenter.predict([load_image(row.image_path)])[0].mask
        if mask.any():
            cache.put(key, {"lungs": mask.astype(np.uint8)})
            masks[row.image_path] = mask
    return masks


def evaluate_bundle(
    bundle_dir: Path | str,
    manifest: Path | str,
    split: str = "test",
    *,
    cache_dir: Path | str | None = None,
    n_boot: int = 1000,
    device: str = "cpu",
    lung_bundle: Path | str | None = None,
) -> dict[str, Any]:
    """Load a bundle the way the pipeline does and evaluate it on ``split`` of a manifest.

    A lungs-only covid bundle gets its input masks from ``lung_bundle`` when given, else from the
    lungs bundle it carries (``input_lungs/``), as in the pipeline.
    """
    bundle_dir = Path(bundle_dir)
    meta = read_metadata(bundle_dir)
    spec = TASK_SPECS[meta.task]
    rows = [r for r in read_manifest(manifest) if r.split == split and spec.accepts(r)]
    if not rows:
        raise ValueError(f"{manifest}: no {meta.task} row in split {split!r}")
    bundle = load_bundle(bundle_dir, meta.task, device=device)
    cache = ArrayCache(cache_dir or Path(manifest).parent / "eval_cache")
    in_spec = meta.input.to_dict()
    header = {
        "bundle": str(bundle_dir),
        "name": meta.name,
        "version": meta.version,
        "task": meta.task,
        "manifest": str(manifest),
        "split": split,
        "n_images": len(rows),
        "operating_threshold": meta.operating_threshold,
        "threshold_method": meta.threshold_method,
    }
    if spec.kind == "classification":
        lung_bundle = lung_bundle or input_lungs_dir(bundle_dir)  # the bundle's own lung model first
        masks = predict_lung_masks(Path(lung_bundle), rows, cache) if lung_bundle else {}
        report = evaluate_classification(
            meta.task,
            bundle.network,
            rows,
            cache,
            in_spec,
            meta.operating_threshold,
            labels_of=spec.label_of,
            lung_masks=masks,
            device=device,
            n_boot=n_boot,
        )
    elif spec.kind == "segmentation":
        pairs = segmentation_source_pairs(
            bundle.network,
            rows,
            in_spec,
            spec.seg_target,
            meta.operating_threshold,
            device=device,
            postprocess=meta.task == "lungs",
        )
        report = segmentation_report(pairs, n_boot=n_boot)
    else:
        report = evaluate_detection(bundle.network, rows, meta.input.size, meta.operating_threshold, device)
    return {**header, "metrics": report}


def write_report(report: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return path
