"""Run one training configuration: ``python -m training.run CONFIG.toml`` (also under torchrun).

``cxr-node train`` calls :func:`train_from_config`; ``torchrun --nproc_per_node 2 -m training.run
CONFIG.toml`` runs the same code in two DDP processes (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from training import distributed
from training.config import RunConfig, load_config
from training.errors import TrainingError

log = logging.getLogger(__name__)

TRAINERS = {
    "projection": "training.trainers.projection",
    "lungs": "training.trainers.lungs",
    "covid": "training.trainers.covid",
    "ggo_detection": "training.trainers.ggo_detection",
    "ggo_segmentation": "training.trainers.ggo_segmentation",
}


def train_from_config(cfg: RunConfig, *, resume: bool = False, device: str | None = None) -> Path | None:
    """Train ``cfg`` in this process (a DDP rank under torchrun); the bundle folder on rank 0."""
    ctx = distributed.init(device)
    try:
        module = importlib.import_module(TRAINERS[cfg.task])
        bundle = module.train(cfg, ctx, resume=resume)
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
    import tomllib

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
