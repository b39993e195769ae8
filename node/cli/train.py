"""``cxr-node train CONFIG.toml``: train one model from a run configuration and export its bundle.

The same code runs under ``torchrun --nproc_per_node N -m training.run CONFIG.toml`` for DDP.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.run import add_arguments as training_arguments

    training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.run import run as train

    return train(args)
