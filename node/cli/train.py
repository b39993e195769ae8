"""``cxr-node train CONFIG.toml``: train one model from a run configuration and export its bundle.

The same code runs under ``torchrun --nproc_per_node N -m training.run CONFIG.toml`` for DDP.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.run import add_arguments as training_arguments

    training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.errors import TrainingError
    from training.run import parse_overrides, train_from_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(
            args.config,
            data_root=args.data_root,
            output_dir=args.output_dir,
            overrides=parse_overrides(args.set),
        )
        bundle = train_from_config(cfg, resume=args.resume, device=args.device)
    except (TrainingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bundle is not None:
        print(f"bundle: {bundle}")
    return 0
