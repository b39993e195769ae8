"""Average independently seeded or mixed-recipe runs into one bundle (:mod:`training.ensemble`).

    .venv/bin/python -m training.recipes.ensemble CONFIG [CONFIG ...] --name NAME --version V \
        [--train] [--member-bundle CONFIG=BUNDLE_DIR ...] [--mixed-recipes [--mixed-splits]] [--min-members N]

Each config is an ordinary ``cxr-node train`` run (the members may be trained in parallel beforehand;
``--train`` trains, one after the other, every member whose bundle is missing). A member's bundle is
``runs/<name>/bundles/<name>`` unless ``--member-bundle`` names another folder (e.g. a shipped bundle in
``models/``: its sha-checked weights are used as they are). ``--member-bundle A.toml,B.toml=DIR`` takes
the members of a mean-ensemble bundle for configs A and B, in order.

lungs 1.3.0 (models/lungs) is the mean of four runs:

    .venv/bin/python -m training.recipes.ensemble training/configs/lungs_member{1,2,3,4}.toml \
        --mixed-recipes --name lungs-unet-v7-mixed-ens4 --version 1.3.0 --min-members 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import load_config
from training.ensemble import build_ensemble, check_members, member_source, parse_member_bundles
from training.run import train_from_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="member run configs (TOML)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--description", default="", help="default: the first member's, marked 'mean of N'")
    parser.add_argument("--member-bundle", action="append", default=[], metavar="CONFIG=DIR",
                        help="take this member's bundle from DIR (e.g. a shipped bundle) instead of its run; "
                             "CONFIG1,CONFIG2=DIR: the members of the mean-ensemble bundle DIR, in order")
    parser.add_argument("--mixed-recipes", action="store_true",
                        help="members may differ in [data], [model] and [train] "
                             "(they must have the same validation and test images)")
    parser.add_argument("--mixed-splits", action="store_true",
                        help="with --mixed-recipes: members may have other splits; none may have trained on "
                             "the ensemble's (first member's) test images")
    parser.add_argument("--train", action="store_true", help="train members whose bundle is missing")
    parser.add_argument("--min-members", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.mixed_splits and not args.mixed_recipes:
        parser.error("--mixed-splits needs --mixed-recipes")
    cfgs = [load_config(p) for p in args.configs]
    check_members(cfgs, args.mixed_recipes)
    try:
        overrides = parse_member_bundles(args.member_bundle)
    except ValueError as exc:
        parser.error(str(exc))
    ready = []
    for cfg in cfgs:
        if not (member_source(cfg, overrides).bundle / "configs" / "metadata.json").is_file():
            if not args.train:
                logging.warning("%s: no bundle at %s; left out (use --train)", cfg.name,
                                member_source(cfg, overrides).bundle)
                continue
            train_from_config(cfg)
        ready.append(cfg)
    if len(ready) < args.min_members:
        print(f"only {len(ready)} member bundle(s) ready; need {args.min_members}", file=sys.stderr)
        return 2
    description = args.description or f"{ready[0].description} (mean of {len(ready)} seeded runs)"
    bundle = build_ensemble(ready, args.name, args.version, description, overrides, args.mixed_recipes,
                            args.mixed_splits)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    m = meta["metrics"]
    print(json.dumps({"bundle": str(bundle), "members": [c.name for c in ready],
                      "validation_selection": [m.get("selection_metric"), m.get("selection_value")],
                      "threshold": meta["operating_threshold"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
