"""``cxr-node evaluate BUNDLE --manifest CSV --split test``: metrics of a bundle, printed and as JSON.

The bundle is loaded exactly as the pipeline loads it (sha256 and task checks). The operating
threshold is the bundle's own (chosen on validation at training time).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder (configs/metadata.json, models/model.pt)")
    parser.add_argument("--manifest", type=Path, required=True, help="manifest CSV with a split column")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--out", type=Path, help="JSON report (default: ./eval-<bundle>-<split>.json)")
    parser.add_argument("--lung-bundle", type=Path, help="lungs bundle for lung masks (COVID shortcut check)")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache-dir", type=Path, help="preprocessed-array cache (default beside the manifest)"
    )


def _line(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"  {name:<22} {value:.4f}"
    if isinstance(value, list) and len(value) == 2:
        return f"  {name:<22} [{value[0]:.4f}, {value[1]:.4f}]"
    return f"  {name:<22} {value}"


def format_report(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [
        f"{report['name']} {report['version']} ({report['task']}) on {report['split']} of "
        f"{report['manifest']}: {report['n_images']} images, threshold {report['operating_threshold']:.4f} "
        f"({report['threshold_method']})"
    ]
    for key in (
        "auc",
        "auc_ci95",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "accuracy",
        "brier",
        "ece",
        "dice_mean",
        "dice_ci95",
        "iou_mean",
        "iou_ci95",
        "map50",
        "map50_95",
    ):
        if key in m and m[key] is not None:
            lines.append(_line(key, m[key]))
    for source, e in m.get("per_source", {}).items():
        lines.append(_line(f"AUC {source}", e["auc"] if e["auc"] is not None else "n/a (one class)"))
    sc = m.get("shortcut_check")
    if sc:
        for key in ("auc_same_images", "auc_lungs_removed", "auc_lungs_only"):
            if key in sc:
                lines.append(_line(key, sc[key] if sc[key] is not None else "n/a"))
        if "note" in sc:
            lines.append(f"  note: {sc['note']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipelines.errors import PipelineError
    from training.errors import TrainingError
    from training.evaluate import evaluate_bundle, write_report

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = evaluate_bundle(
            args.bundle,
            args.manifest,
            args.split,
            cache_dir=args.cache_dir,
            n_boot=args.n_bootstrap,
            device=args.device,
            lung_bundle=args.lung_bundle,
        )
    except (PipelineError, TrainingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"eval-{report['name']}-{args.split}.json")
    write_report(report, out)
    print(format_report(report))
    print(f"wrote {out}")
    return 0
