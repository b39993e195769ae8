"""``cxr-node serve``: the DICOM listener, scheduler, worker(s) and delivery in one process."""

from __future__ import annotations

import argparse
import sys

from node.config import load_config
from node.errors import NodeError
from node.logs import setup_logging
from node.tls import check_tls_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="analysis worker threads in this process (default: [worker].workers)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except NodeError as exc:
        print(f"cxr-node serve: {exc}", file=sys.stderr)
        return 2
    try:  # certificates and keys: a missing, mismatched or expired one stops serve before anything starts
        check_tls_files(config)
    except NodeError as exc:
        print(f"cxr-node serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.node.log_level, config.node.log_format)
    from node.service import NodeService

    try:
        service = NodeService(config, workers=args.workers)
    except NodeError as exc:
        print(f"cxr-node serve: {exc}", file=sys.stderr)
        return 1
    try:
        return service.run_until_signal()
    except NodeError as exc:  # models not loadable (nothing accepted), the [http] port in use...
        print(f"cxr-node serve: {exc}", file=sys.stderr)
        service.stop(timeout=5)
        return 1
    except OSError as exc:  # e.g. the port is in use
        print(
            f"cxr-node serve: cannot listen on {config.node.host}:{config.node.port}: {exc}", file=sys.stderr
        )
        service.stop(timeout=5)
        return 1
