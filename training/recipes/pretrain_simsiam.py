"""Pretrain a classification recipe's network with SimSiam on the recipe's own non-test pictures, unlabelled.

    .venv/bin/python -m training.recipes.pretrain_simsiam CONFIG [--out runs/init/NAME.pt] \
        [--epochs 60] [--batch-size 64] [--lr 0.05] [--threads N] [--set SECTION.KEY=VALUE ...]

The pool is every row of CONFIG's manifest that its task accepts, that is NOT in the test split and
whose dataset has train rows (a collection that no labelled run trains on, such as OpenIST for covid,
stays an unseen-source check), prepared exactly as the labelled run prepares its inputs
(``training.trainers.loop.classification_inputs``; lungs-only recipes get their masks from
``[run] lung_bundle``, as in training). Labels are never read.
The test split is never read, so the shipped model's test figures stay untouched. Cross-validation
(``training.recipes.crossval``) draws its folds from the same pool: there every out-of-fold picture
has been seen once, unlabelled, by the pretraining (transductive), and a rule that compares recipes
must say so.

Writes the network's ``state_dict`` to ``--out`` (default ``runs/init/<run name>-simsiam-e<epochs>.pt``)
and, beside it, ``<out>.json``: settings, pool counts per dataset, manifest sha256, per-epoch loss
and embedding spread, the file's sha256 (the value for ``[model] init_sha256``). A labelled run
starts from it with ``[model] init_weights``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from training.config import load_config
from training.data import collect_rows
from training.errors import ConfigError
from training.manifest import file_sha256
from training.run import parse_overrides
from training.selfsup import PretrainSettings, pretrain
from training.tasks import TASK_SPECS
from training.trainers.loop import build_model, classification_inputs, input_spec_dict

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=PretrainSettings.epochs)
    parser.add_argument("--batch-size", type=int, default=PretrainSettings.batch_size)
    parser.add_argument("--lr", type=float, default=PretrainSettings.lr)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overrides=parse_overrides(args.overrides))
        spec = TASK_SPECS[cfg.task]
        if spec.kind != "classification":
            raise ConfigError(f"{args.config}: SimSiam pretraining is for classification, not {cfg.task}")
        rows = [r for r in collect_rows(cfg) if spec.accepts(r)]
        if not rows or not all(r.split for r in rows):
            raise ConfigError(f"{args.config}: the manifest must assign every row a split, so that the "
                              "test split can be left out of pretraining")
        trained_on = {r.dataset for r in rows if r.split == "train"}
        pool = [r for r in rows if r.split != "test" and r.dataset in trained_on]
        in_spec = input_spec_dict(cfg, spec)
        pool, inputs = classification_inputs(cfg, spec, pool)
        if args.threads:
            torch.set_num_threads(args.threads)
        net, _ = build_model(cfg, spec, in_spec["channels"])
        settings = PretrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=cfg.seed)
        log.info("SimSiam on %d non-test pictures of %s", len(pool), cfg.data.manifest)
        history = pretrain(net, inputs, int(in_spec["size"]), settings)
    except (ConfigError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(cfg.output_dir) / "init" / f"{cfg.name}-simsiam-e{args.epochs}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    sha = file_sha256(out)
    record = {
        "config": str(args.config),
        "manifest": cfg.data.manifest,
        "manifest_sha256": file_sha256(Path(cfg.data.manifest)) if Path(cfg.data.manifest).is_file() else "",
        "pool": len(pool),
        "pool_by_dataset": dict(Counter(r.dataset for r in pool)),
        "settings": asdict(settings),
        "history": [asdict(h) for h in history],
        "sha256": sha,
    }
    Path(f"{out}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"{out}  sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
