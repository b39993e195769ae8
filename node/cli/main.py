"""The ``cxr-node`` console script: one entry point, one module per subcommand.

Subcommand modules are imported only when chosen, so ``cxr-node status`` does not pay for
importing torch and MONAI (several seconds on a small machine). Each module exposes
``add_arguments(parser)`` and ``run(args) -> int`` (the process exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("node.cli.serve", "run the DICOM node: listener, scheduler, worker and delivery"),
    "worker": ("node.cli.worker", "run only analysis workers against a shared database (scale-out)"),
    "status": ("node.cli.status", "print job, delivery and study counts"),
    "resend": ("node.cli.resend", "re-queue failed deliveries"),
    "purge": ("node.cli.purge", "remove finished studies older than the retention period"),
    "analyze": ("node.cli.analyze", "analyse DICOM/PNG/JPEG files offline and write the result objects"),
    "datasets": ("node.cli.datasets", "scan public chest X-ray datasets into manifests and merge them"),
    "train": ("node.cli.train", "train a model from a run configuration and export a bundle"),
    "evaluate": ("node.cli.evaluate", "evaluate a model bundle on a manifest split"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
