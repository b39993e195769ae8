"""Export a trained model as a bundle that ``pipelines`` loads unchanged, with its model card.

The operating threshold is chosen on the VALIDATION split (the split that also selected the
epoch); the test split is evaluated once, afterwards, and only reported. The bundle records the
metrics, the threshold and how it was chosen, the manifest's sha256, the resolved run
configuration and the git commit, so a number in a card can always be traced to its data.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bundle import INPUT_LUNGS_DIR, BundleMetadata, read_metadata, save_bundle
from pipelines.networks import DEFAULT_TARGET_LAYERS
from training.config import RunConfig
from training.data import task_dataset
from training.evaluate import evaluate_classification, segmentation_source_pairs
from training.manifest import ManifestRow
from training.metrics import choose_threshold, dice_iou, segmentation_report
from training.tasks import TaskSpec
from training.trained import TrainedModel
from training.validation import predict

log = logging.getLogger(__name__)


def git_commit(repo: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` (+ "-dirty" when tracked files changed); None outside a checkout."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def training_data_summary(rows: Sequence[ManifestRow], spec: TaskSpec, manifest_sha: str) -> dict[str, Any]:
    by_split: dict[str, dict[str, Any]] = {}
    for split in ("train", "validation", "test"):
        members = [r for r in rows if r.split == split]
        entry: dict[str, Any] = {
            "images": len(members),
            "patients": len({r.patient_id for r in members}),
            "datasets": dict(Counter(r.dataset for r in members)),
        }
        if spec.label_of is not None:
            entry["positives"] = sum(spec.label_of(r) for r in members)
        by_split[split] = entry
    return {
        "manifest_sha256": manifest_sha,
        "splits": by_split,
        "licenses": sorted({r.license for r in rows if r.license})[:20],
    }


def segmentation_threshold(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> tuple[float, str]:
    """The probability cut (0.30..0.70) maximising mean per-image validation Dice."""
    best_t, best_v = 0.5, -np.inf
    for t in np.round(np.arange(0.3, 0.71, 0.05), 2):
        v = float(np.mean([dice_iou(p >= t, m)[0] for p, m in zip(probs, truths, strict=True)]))
        if v > best_v + 1e-9:
            best_t, best_v = float(t), v
    return best_t, f"max mean validation Dice over 0.30..0.70 (Dice {best_v:.4f})"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return str(value)


def model_card(cfg: RunConfig, spec: TaskSpec, metadata: dict[str, Any]) -> str:
    """The bundle's docs/README.md: what it is, on what data, how good, and what it cannot do."""
    m = metadata["metrics"]
    test, val = m.get("test", {}), m.get("validation", {})
    lines = [
        f"# {metadata['name']} {metadata['version']} ({spec.task})",
        "",
        "**Research use only. Not for diagnosis.**",
        "",
        f"- Architecture: `{metadata['architecture']}`; input: `{json.dumps(metadata['input'])}`",
        f"- Labels: {list(spec.labels)}; operating threshold {metadata['operating_threshold']:.4f} "
        f"({metadata['threshold_method']}); {spec.threshold_meaning}.",
        f"- Selected epoch: {m.get('best_epoch')} by validation {m.get('selection_metric')}; the test split "
        "was not used for any choice.",
        f"- Manifest sha256 `{metadata['manifest_sha256']}`; git commit `{metadata['git_commit']}`.",
        "",
        "## Data",
        "",
        "| split | images | patients | positives | datasets |",
        "|---|---|---|---|---|",
    ]
    for split, e in metadata["training_data"]["splits"].items():
        lines.append(
            f"| {split} | {e['images']} | {e['patients']} | {e.get('positives', 'n/a')} | "
            f"{', '.join(f'{k} {v}' for k, v in e['datasets'].items())} |"
        )
    lines += ["", "## Metrics", "", "| metric | validation | test |", "|---|---|---|"]
    keys = (
        ["auc", "auc_ci95", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "brier", "ece"]
        if spec.kind == "classification"
        else ["dice_mean", "dice_ci95", "iou_mean", "iou_ci95", "n"]
        if spec.kind == "segmentation"
        else ["map50", "map50_95", "n_truth_boxes"]
    )
    for k in keys:
        lines.append(f"| {k} | {_fmt(val.get(k))} | {_fmt(test.get(k))} |")
    if spec.task == "covid":
        sc = test.get("shortcut_check", {})
        lines += [
            "",
            "## Shortcut check (test split, images with a lung mask)",
            "",
            f"- AUC on the same images: {_fmt(sc.get('auc_same_images'))}",
            "- AUC with the lungs removed (lung mask inverted, lungs black): "
            f"{_fmt(sc.get('auc_lungs_removed'))}",
            f"- AUC with only the lungs shown: {_fmt(sc.get('auc_lungs_only'))}",
            f"- {sc.get('note', sc.get('interpretation', ''))}",
            "",
            "A model that keeps a high AUC with the lungs removed is reading the hospital, the text "
            "or the devices, not the lungs: internal AUC alone is no evidence of a working COVID model "
            "(see the data README). Per-source AUC on the test split:",
            "",
        ]
        for source, e in test.get("per_source", {}).items():
            lines.append(f"- {source}: n={e['n']}, positives={e['positives']}, AUC {_fmt(e['auc'])}")
    lines += [
        "",
        "## Limitations",
        "",
        "- Trained on small public research collections (see licenses in metadata.json); internal "
        "test metrics overstate performance on other hospitals.",
        "- Not validated prospectively; not a medical device.",
        "",
    ]
    return "\n".join(lines)


def classification_threshold(cfg: RunConfig, labels: np.ndarray, scores: np.ndarray) -> tuple[float, str]:
    """The operating threshold by ``[threshold]`` on the validation outputs, and how it was chosen."""
    if cfg.threshold.method == "fixed" or len(set(labels.tolist())) < 2:
        return cfg.threshold.value, f"fixed {cfg.threshold.value} (configured or one-class validation)"
    threshold = choose_threshold(labels, scores, method=cfg.threshold.method, target=cfg.threshold.target)
    method = f"{cfg.threshold.method} on the validation split"
    if cfg.threshold.method == "sensitivity":
        method += f" (target sensitivity {cfg.threshold.target})"
    return threshold, method


def export_torch_bundle(cfg: RunConfig, model: TrainedModel) -> Path:
    """Threshold on validation, validation and test reports, then the bundle with its card."""
    spec, net, rows = model.spec, model.net, model.rows
    device = next(net.parameters()).device.type
    val_rows = [r for r in rows if r.split == "validation"]
    test_rows = [r for r in rows if r.split == "test"]
    n_boot = cfg.evaluation.n_bootstrap
    if spec.kind == "classification" and model.in_spec["mode"] == "lungs_only":
        val_rows = [r for r in val_rows if r.lung_mask or r.image_path in model.lung_masks]
    data = task_dataset(
        spec, val_rows, model.cache, model.in_spec, augment=False, seed=0, lung_masks=model.lung_masks
    )
    pred = predict(net, data, spec, model.loss_fn, device, cfg.train.batch_size)
    if spec.kind == "classification":
        threshold, method = classification_threshold(cfg, pred.labels, pred.scores)

        def report(split_rows: Sequence[ManifestRow]) -> dict[str, Any]:
            return evaluate_classification(
                spec.task,
                net,
                split_rows,
                model.cache,
                model.in_spec,
                threshold,
                labels_of=spec.label_of,
                lung_masks=model.lung_masks,
                device=device,
                n_boot=n_boot,
                seed=cfg.seed,
            )
    else:
        threshold, method = segmentation_threshold(pred.seg_probs or [], pred.seg_truth or [])

        def report(split_rows: Sequence[ManifestRow]) -> dict[str, Any]:
            pairs = segmentation_source_pairs(
                net,
                split_rows,
                model.in_spec,
                spec.seg_target,
                threshold,
                device=device,
                postprocess=spec.task == "lungs",
            )
            return segmentation_report(pairs, n_boot=n_boot, seed=cfg.seed)

    val_report = report(val_rows)
    test_report = report(test_rows) if test_rows else {}
    name, value = model.selection(pred, val_rows)
    for figures in (val_report, test_report):
        figures.pop("dice_per_image", None)
    metrics = {
        "best_epoch": model.best_epoch,
        "selection_metric": name,
        "selection_value": value,
        "validation": val_report,
        "test": test_report,
    }
    arch = cfg.model.architecture
    metadata = BundleMetadata(
        name=cfg.name,
        version=cfg.version,
        task=spec.task,
        architecture=arch,
        network_def=model.definition,
        input=model.in_spec,
        labels=list(spec.labels),
        operating_threshold=float(threshold),
        threshold_method=method,
        description=cfg.description or f"{spec.task} model trained by cxr-node training",
        target_layer=DEFAULT_TARGET_LAYERS.get(arch) if spec.kind == "classification" else None,
        metrics=metrics,
        training_data={**training_data_summary(rows, spec, model.manifest_sha), "config": cfg.to_dict()},
        git_commit=git_commit(),
        manifest_sha256=model.manifest_sha,
        min_patient_age_years=float(cfg.min_patient_age_years),
    )
    return save(cfg, spec, metadata, net.state_dict())


def save(cfg: RunConfig, spec: TaskSpec, metadata: BundleMetadata, weights: Any) -> Path:
    """Write the bundle (weights, metadata, card) under ``<run>/bundles/<name>``; a lungs-only covid
    bundle first gets its lungs bundle (:func:`copy_input_lungs`)."""
    card = model_card(cfg, spec, {**metadata.to_json(), "input": metadata.input.to_dict()})
    target = cfg.run_dir / "bundles" / cfg.name
    if spec.task == "covid" and cfg.lung_bundle and metadata.input.mode == "lungs_only":
        copy_input_lungs(Path(cfg.lung_bundle), target)
    bundle_dir = save_bundle(target, metadata, weights, card)
    log.info("exported %s", bundle_dir)
    return bundle_dir


def copy_input_lungs(lung_bundle: Path, covid_bundle: Path) -> Path:
    """Put the lungs bundle whose masks cut the training input into ``<covid_bundle>/input_lungs``.

    Written before the covid bundle's own metadata, so that a bundle the registry can see always has
    it. Its weights keep their sha256, which load_bundle checks like any bundle's.
    """
    if read_metadata(lung_bundle).task != "lungs":
        raise ValueError(f"{lung_bundle}: not a lungs bundle")
    target = covid_bundle / INPUT_LUNGS_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(lung_bundle, target, ignore=shutil.ignore_patterns(INPUT_LUNGS_DIR.name))
    return target
