"""``cxr-node purge``: remove finished studies older than the retention period (node/retention.py).

``serve`` does the same by itself when ``[node] retention_days`` is set; this command is for a node run
without it (a cron job), for a one-off clean-up with another age, and ``--dry-run`` shows what would go.
"""

from __future__ import annotations

import argparse
import json
import sys

from node.audit import open_audit_trail, study_deleted
from node.config import load_config
from node.errors import NodeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--older-than-days", type=float, default=None, metavar="DAYS",
                        help="age of a study's newest object (default: [node] retention_days)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        days = config.node.retention_days if args.older_than_days is None else args.older_than_days
        if not days > 0:
            print("cxr-node purge: error: no age given: pass --older-than-days DAYS (> 0) or set "
                  f"[node] retention_days in {config.source}", file=sys.stderr)
            return 2
        from node.process import open_existing_repository, open_store
        from node.retention import purge

        repo = open_existing_repository(config)
        trail = open_audit_trail(config)

        def audit_removed(study: str, instances: int) -> None:
            """PS3.15 A.5.3.5 DICOM Study Deleted, right after each study goes (a purge stopped
            halfway has audited every study it removed)."""
            trail.record(study_deleted(node_aet=config.node.ae_title, study_instance_uid=study,
                                       command="purge", by_operator=True, instances=instances))

        try:
            report = purge(repo, open_store(config), days, dry_run=args.dry_run,
                           on_removed=audit_removed)
        finally:
            trail.close()
    except NodeError as exc:
        print(f"cxr-node purge: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"dry_run": report.dry_run, "older_than_days": days, "studies": report.studies,
                          "instances": report.instances, "bytes": report.bytes,
                          "files_missing": report.files_missing}))
    else:
        print(f"{report.summary()}: finished studies whose newest object is over {days:g} days old")
        for study in report.studies:
            print(f"  {study}")
    return 0
