"""Run one training configuration: ``python -m training.run CONFIG.toml`` (also under torchrun).

``cxr-node train`` calls :func:`train_from_config`: the task's trainer fits the model (every rank),
then rank 0 exports the best checkpoint as a bundle. ``torchrun --nproc_per_node 2 -m training.run
CONFIG.toml`` runs the same code in two DDP processes (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from training import distributed
from training.config import RunConfig, load_config
from training.errors import TrainingError
from training.export import export_torch_bundle
from training.trainers import covid, ggo_detection, ggo_segmentation, lungs, projection

log = logging.getLogger(__name__)


class Trainer(NamedTuple):
    fit: Callable[..., Any]  # (cfg, ctx, *, resume) -> the trained model on rank 0, else None
    export: Callable[[RunConfig, Any], Path]  # (cfg, trained model) -> bundle folder


TRAINERS: dict[str, Trainer] = {
    "projection": Trainer(projection.fit, export_torch_bundle),
    "lungs": Trainer(lungs.fit, export_torch_bundle),
    "covid": Trainer(covid.fit, export_torch_bundle),
    "ggo_segmentation": Trainer(ggo_segmentation.fit, export_torch_bundle),
    "ggo_detection": Trainer(ggo_detection.fit, ggo_detection.export),
}


def train_from_config(cfg: RunConfig, *, resume: bool = False, device: str | None = None) -> Path | None:
    """Train ``cfg`` in this process (a DDP rank under torchrun); the bundle folder on rank 0."""
    ctx = distributed.init(device)
    try:
        trainer = TRAINERS[cfg.task]
        trained = trainer.fit(cfg, ctx, resume=resume)
        bundle = trainer.export(cfg, trained) if trained is not None else None
        # Rank 0 evaluates and exports after the last epoch while the other ranks are done. Tearing the
        # gloo group down on one rank while another still holds it aborted that rank now and then
        # ("terminate called without an active exception", test_ddp): every rank leaves together.
        # Only on success: after an exception the other ranks may be inside another collective.
        ctx.barrier()
        return bundle
    finally:
        distributed.shutdown(ctx)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="run configuration (TOML)")
    parser.add_argument("--data-root", help="override [data] root (default in the file: ../shared/data)")
    parser.add_argument("--output-dir", help="override [run] output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from <run>/checkpoints/last.pt")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (TOML value), e.g. --set train.epochs=1",
    )


def parse_overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def run(args: argparse.Namespace) -> int:
    """Train from parsed arguments (shared by ``cxr-node train`` and ``python -m training.run``)."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
