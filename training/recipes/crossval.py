"""Cross-validate one classification recipe (:mod:`training.crossval`) and export its fold ensemble.

    .venv/bin/python -m training.recipes.crossval CONFIG [--folds 5] [--fold-seed 0] \
        [--only K ...] [--aggregate] [--against OTHER_CONFIG] [--export-ensemble NAME VERSION] \
        [--set SECTION.KEY=VALUE ...]

covid 2.1.0 (models/covid) is the fold ensemble of ``training/configs/covid.toml``:

    .venv/bin/python -m training.recipes.covid_manifests
    .venv/bin/python -m training.recipes.crossval training/configs/covid.toml \
        --export-ensemble covid-ms-r18w16-128-zscore-cv5 2.1.0

``--only K`` trains and scores fold K only (folds may run in parallel processes); ``--aggregate`` only
pools the scored folds into ``report.json`` / ``report.md``; ``--against`` adds this recipe's AUCs minus
another recipe's, cross-validated on the same folds, with a paired bootstrap CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import load_config
from training.crossval import (
    aggregate,
    cv_dir,
    export_fold_ensemble,
    markdown,
    paired_difference,
    run_fold,
)
from training.errors import ConfigError, TrainingError
from training.run import parse_overrides

CLASSIFICATION_TASKS = ("covid", "projection")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    ap.add_argument("--only", type=int, action="append", default=[], help="run only fold K (repeatable)")
    ap.add_argument("--aggregate", action="store_true", help="only pool the scored folds into the report")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--export-ensemble", nargs=2, metavar=("NAME", "VERSION"),
                    help="after the report: export the mean of the fold models as one bundle (runs/NAME)")
    ap.add_argument("--against", type=Path, help="another covid recipe cross-validated on the same folds: "
                    "report this one's AUCs minus that one's, with a paired bootstrap CI")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
        cfg = load_config(args.config, overrides=overrides)
        if cfg.task not in CLASSIFICATION_TASKS:
            raise ConfigError(f"cross-validation is for the tasks {CLASSIFICATION_TASKS}, not {cfg.task}")
        if not args.aggregate:
            for k in args.only or range(args.folds):
                if not 0 <= k < args.folds:
                    raise ConfigError(f"--only {k}: folds are 0..{args.folds - 1}")
                run_fold(args.config, k, args.folds, args.fold_seed, overrides)
            if args.only:
                return 0
        report = aggregate(cfg, args.folds, args.n_boot)
        if args.against:
            if cfg.task != "covid":
                raise ConfigError("--against compares covid figures")
            report["paired"] = paired_difference(cfg, load_config(args.against), args.folds, args.n_boot)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = cv_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if args.export_ensemble:
        try:
            bundle = export_fold_ensemble(args.config, report, *args.export_ensemble, overrides)
        except (TrainingError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"bundle: {bundle}")
    (root / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    md = markdown(report)
    (root / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
