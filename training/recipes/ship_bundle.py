"""Ship a trained run bundle into models/<task>: float16 weights, re-evaluation, per-dataset audit.

    .venv/bin/python -m training.recipes.ship_bundle runs/<run>/bundles/<run> models/<task> \
        --manifest runs/<run>/manifest.csv [--lung-bundle models/lungs] [--card-extra CARD.md]

The run bundle is re-saved with ``pipelines.bundle.save_bundle(dtype="float16")`` (ggo_detection: the
ultralytics checkpoint is copied as it is), then evaluated FROM THE SHIPPED FILE on the manifest's
test split, overall and per dataset; the result goes into metadata.json as ``bias_audit``
(:mod:`training.bias_audit`), so the card's figures are those of the
weights that ship. ``--card-extra`` appends hand-written card sections (design, targets, failure modes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from pipelines.bundle import input_lungs_dir, read_metadata, save_bundle
from training.bias_audit import bias_audit
from training.export import copy_input_lungs

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_bundle", type=Path)
    ap.add_argument("target", type=Path)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--lung-bundle", type=Path)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--card-extra", type=Path)
    ap.add_argument("--extra-json", type=Path, help="JSON merged into metadata.json top level")
    args = ap.parse_args()

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
    audit = bias_audit(
        args.target, args.manifest, lung_bundle=args.lung_bundle, cache_dir=REPO / "runs" / "cache"
    )
    md = json.loads((args.target / "configs" / "metadata.json").read_text())
    md["bias_audit"] = audit
    run_md = json.loads((args.run_bundle / "configs" / "metadata.json").read_text())
    for key in ("ensemble", "crossval"):  # written by training.ensemble / training.crossval; not fields
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
