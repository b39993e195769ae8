"""``cxr-node resend``: put failed deliveries back in the outbox (fresh attempt count)."""

from __future__ import annotations

import argparse
import sys

from node.audit import open_audit_trail, resend_requested
from node.config import load_config
from node.errors import NodeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--destination", help="only deliveries to this destination name")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        from node.process import open_existing_repository

        if args.destination and args.destination not in {d.name for d in config.destinations}:
            print(
                f"cxr-node resend: warning: {args.destination!r} is not a configured destination",
                file=sys.stderr,
            )
        count = open_existing_repository(config).resend_failed(args.destination)
        trail = open_audit_trail(config)
        trail.record(resend_requested(node_aet=config.node.ae_title, destination=args.destination,
                                      count=count))
        trail.close()
    except NodeError as exc:
        print(f"cxr-node resend: {exc}", file=sys.stderr)
        return 1
    print(f"{count} failed deliveries re-queued")
    return 0
