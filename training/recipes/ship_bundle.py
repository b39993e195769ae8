"""Ship a trained run bundle into models/<task>: float16 weights, re-evaluation, per-dataset audit.

    .venv/bin/python -m training.recipes.ship_bundle runs/<run>/bundles/<run> models/<task> \
        --manifest runs/<run>/manifest.csv [--lung-bundle models/lungs] [--card-extra CARD.md]

The run bundle is re-saved with ``pipelines.bundle.save_bundle(dtype="float16")`` (ggo_detection: the
ultralytics checkpoint is copied as it is), then evaluated FROM THE SHIPPED FILE on the manifest's
test split, overall and per dataset; the result goes into metadata.json as ``bias_audit`` (accuracy,
sensitivity, specificity get bootstrap and Wilson 95% CIs), so the card's figures are those of the
weights that ship. ``--card-extra`` appends hand-written card sections (design, targets, failure modes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from training.metrics import wilson_ci

REPO = Path(__file__).resolve().parents[2]


def boot_prop(k: int, n: int, seed: int = 0) -> list[float] | None:
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    v = rng.binomial(n, k / n, 2000) / n
    return [float(x) for x in np.quantile(v, [0.025, 0.975])]


def prop_ci(m: dict) -> dict:
    out = {}
    tp, fp, tn, fn = (m.get(k) for k in ("tp", "fp", "tn", "fn"))
    if tp is None:
        return out
    for name, k, n in (("accuracy", tp + tn, tp + tn + fp + fn), ("sensitivity", tp, tp + fn),
                       ("specificity", tn, tn + fp)):
        out[name] = {"value": k / n if n else None, "k": k, "n": n,
                     "bootstrap_ci95": boot_prop(k, n), "wilson_ci95": wilson_ci(k, n)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_bundle", type=Path)
    ap.add_argument("target", type=Path)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--lung-bundle", type=Path)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--card-extra", type=Path)
    ap.add_argument("--extra-json", type=Path, help="JSON merged into metadata.json top level")
    args = ap.parse_args()

    import torch

    from pipelines.bundle import input_lungs_dir, read_metadata, save_bundle
    from training.evaluate import evaluate_bundle
    from training.export import copy_input_lungs
    from training.manifest import read_manifest, write_manifest

    meta = read_metadata(args.run_bundle)
    card = (args.run_bundle / "docs" / "README.md").read_text(encoding="utf-8")
    if args.target.exists():
        shutil.rmtree(args.target)
    if meta.task == "ggo_detection":
        shutil.copytree(args.run_bundle, args.target)
    else:
        state = torch.load(args.run_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
        nested = input_lungs_dir(args.run_bundle)
        if nested is not None:  # the covid model's own lung model travels with it, unchanged
            copy_input_lungs(nested, args.target)
        save_bundle(args.target, meta, state, card, dtype=args.dtype)
    rows = read_manifest(args.manifest)
    lb = args.lung_bundle
    report = evaluate_bundle(args.target, args.manifest, "test", lung_bundle=lb,
                             cache_dir=REPO / "runs" / "cache")
    audit: dict = {"note": "test split of the run manifest, evaluated from the shipped (fp16) bundle"}
    m = report["metrics"]
    m.pop("reliability", None)
    audit["overall"] = {k: v for k, v in m.items() if k not in ("dice_per_image",)}
    audit["overall"]["proportion_cis"] = prop_ci(m)
    by_ds: dict[str, list] = defaultdict(list)
    for r in rows:
        if r.split == "test":
            by_ds[r.dataset].append(r)
    if len(by_ds) > 1:
        audit["per_dataset"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for ds, rs in sorted(by_ds.items()):
                path = Path(tmp) / f"{ds}.csv"
                write_manifest(rs, path)
                try:
                    rep = evaluate_bundle(args.target, path, "test", lung_bundle=lb,
                                          cache_dir=REPO / "runs" / "cache")["metrics"]
                except ValueError as exc:
                    audit["per_dataset"][ds] = {"error": str(exc)}
                    continue
                rep.pop("reliability", None)
                rep.pop("dice_per_image", None)
                rep["proportion_cis"] = prop_ci(rep)
                audit["per_dataset"][ds] = rep
    md = json.loads((args.target / "configs" / "metadata.json").read_text())
    md["bias_audit"] = audit
    run_md = json.loads((args.run_bundle / "configs" / "metadata.json").read_text())
    for key in ("ensemble", "crossval"):  # written by recipes/ensemble.py, recipes/crossval.py; not fields
        if key in run_md:
            md[key] = run_md[key]
    if args.extra_json:
        md.update(json.loads(args.extra_json.read_text()))
    (args.target / "configs" / "metadata.json").write_text(json.dumps(md, indent=2, default=float) + "\n")
    if args.card_extra:
        card = (args.target / "docs" / "README.md").read_text() + "\n" + args.card_extra.read_text()
        (args.target / "docs" / "README.md").write_text(card)
    print(json.dumps(audit, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
