"""GGO detection trainer: ultralytics YOLO built from a model yaml, fully offline.

Where a dataset has only GGO masks (GeneralBlockchain), the truth boxes are the bounding boxes of
each mask's connected components (:func:`training.evaluate.mask_boxes`). The dataset is written in
YOLO format to ``<run>/yolo_data`` with the pipeline's own letterbox
(:func:`pipelines.preprocess.prepare_yolo_image`), so ultralytics' letterbox is a no-op and
training sees exactly what inference sees. ultralytics selects ``best.pt`` by its fitness on OUR
validation split; the test split is only evaluated. Left-right flips are off (anatomy is sided).

Distributed: ultralytics runs its own DDP (``[model] params.device = "0,1"``); under ``torchrun``
only rank 0 trains this task.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.bundle import BundleMetadata
from pipelines.image import load_image
from pipelines.networks import network_def
from pipelines.preprocess import InputSpec, prepare_yolo_image
from pipelines.yolo_env import prepare_ultralytics
from training.config import RunConfig
from training.data import prepare_rows, split_rows
from training.distributed import DistContext
from training.errors import TrainingError
from training.evaluate import box_f1, detection_predictions, evaluate_detection, truth_boxes
from training.export import git_commit, save, training_data_summary
from training.manifest import ManifestRow
from training.tasks import GGO_DETECTION as SPEC

log = logging.getLogger(__name__)

YOLO_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def write_yolo_dataset(rows: list[ManifestRow], out: Path, imgsz: int) -> Path:
    """images/<split>/<n>.png + labels/<split>/<n>.txt (class cx cy w h, normalised) + data.yaml."""
    if out.exists():
        shutil.rmtree(out)
    for i, row in enumerate(rows):
        split = YOLO_SPLITS[row.split]
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        image, geometry = prepare_yolo_image(load_image(row.image_path).pixels, imgsz)
        Image.fromarray(image).save(out / "images" / split / f"{i:06d}.png")
        boxes = geometry.boxes_to_model(truth_boxes(row)).clip(0, imgsz)
        lines = []
        for x0, y0, x1, y1 in boxes:
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                lines.append(
                    f"0 {(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} "
                    f"{(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}"
                )
        (out / "labels" / split / f"{i:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    for split in ("train", "val", "test"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    data_yaml = out / "data.yaml"
    data_yaml.write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\n"
        f"names:\n  0: {SPEC.labels[0]}\n"
    )
    return data_yaml


def choose_confidence(preds: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, str]:
    """The minimum box confidence maximising box F1 (IoU >= 0.5) on the validation split."""
    best_c, best_f = 0.25, -1.0
    for c in np.round(np.arange(0.05, 0.91, 0.05), 2):
        f1 = box_f1([p[p[:, 4] >= c] for p in preds], truths)["f1"]
        if f1 > best_f + 1e-9:
            best_c, best_f = float(c), f1
    return best_c, f"max box F1 at IoU 0.5 on the validation split (F1 {best_f:.3f})"


@dataclass
class YoloRun:
    """A finished detector run: ultralytics' ``best.pt`` (chosen by its fitness on our validation split)."""

    best: Path
    rows: list[ManifestRow]
    manifest_sha: str
    imgsz: int


def fit(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> YoloRun | None:
    """Train YOLO on rank 0 (ultralytics runs its own DDP); None on the other ranks."""
    rows, _, manifest_sha = prepare_rows(cfg, SPEC, ctx)
    if not ctx.is_main:
        return None
    imgsz = int(cfg.input.get("size", 640))
    if imgsz % 32:
        raise TrainingError(f"{cfg.source_file}: [input] size {imgsz} must be a multiple of 32 for YOLO")
    run_dir = cfg.run_dir.resolve()
    ultralytics = prepare_ultralytics(None)  # $CXR_NODE_STATE_DIR or ~/.cache/cxr-node, as the pipeline
    data_yaml = write_yolo_dataset(rows, run_dir / "yolo_data", imgsz)
    project = run_dir / "yolo"
    last = project / "train" / "weights" / "last.pt"
    params = dict(cfg.model.params)
    device = str(params.pop("device", "cpu"))
    if resume and last.is_file():
        model = ultralytics.YOLO(str(last))
        model.train(resume=True)
    else:
        model = ultralytics.YOLO(cfg.model.yolo_cfg, task="detect")
        model.train(
            data=str(data_yaml),
            epochs=cfg.train.epochs,
            imgsz=imgsz,
            batch=cfg.train.batch_size,
            workers=cfg.train.num_workers,
            device=device,
            pretrained=False,
            amp=False,
            plots=False,
            project=str(project),
            name="train",
            exist_ok=True,
            seed=cfg.seed,
            deterministic=True,
            lr0=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fliplr=0.0,
            verbose=False,
            patience=cfg.train.patience or 100,
            **params,
        )
    best = project / "train" / "weights" / "best.pt"
    if not best.is_file():
        raise TrainingError(f"{project}: ultralytics wrote no best.pt")
    return YoloRun(best=best, rows=rows, manifest_sha=manifest_sha, imgsz=imgsz)


def export(cfg: RunConfig, run: YoloRun) -> Path:
    """Box confidence on validation, validation and test reports, then the bundle (the checkpoint as is)."""
    yolo = prepare_ultralytics(None).YOLO(str(run.best), task="detect")
    val_rows, test_rows = split_rows(run.rows, "validation"), split_rows(run.rows, "test")
    val_preds = detection_predictions(yolo, val_rows, run.imgsz)
    threshold, method = choose_confidence(val_preds, [truth_boxes(r) for r in val_rows])
    val_report = evaluate_detection(yolo, val_rows, run.imgsz, threshold)
    test_report = evaluate_detection(yolo, test_rows, run.imgsz, threshold) if test_rows else {}
    metadata = BundleMetadata(
        name=cfg.name,
        version=cfg.version,
        task=SPEC.task,
        architecture="yolo",
        network_def=network_def("yolo", cfg=cfg.model.yolo_cfg, num_classes=1),
        input=InputSpec(size=run.imgsz, normalization="unit", channels=3).to_dict(),
        labels=list(SPEC.labels),
        operating_threshold=threshold,
        threshold_method=method,
        description=cfg.description or "GGO boxes (YOLO) trained by cxr-node training",
        metrics={
            "best_epoch": "ultralytics best.pt (fitness on validation)",
            "selection_metric": "fitness",
            "validation": val_report,
            "test": test_report,
        },
        training_data={**training_data_summary(run.rows, SPEC, run.manifest_sha), "config": cfg.to_dict()},
        git_commit=git_commit(),
        manifest_sha256=run.manifest_sha,
    )
    return save(cfg, SPEC, metadata, run.best)
