"""``cxr-node status``: counts by state, recent errors and per-study progress.

Also the analysis processes with the models they run (node.worker_registry), and, for every job,
the images it could not analyse, one line each with the stage and the reason (the job's note,
``<uid>: <stage>: <reason>`` per line, written by node.worker without patient values).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from node.config import load_config
from node.db import Job
from node.errors import DatabaseError, NodeError, parse_image_failures
from node.logs import escape_control
from node.repository import status as status_queries
from node.worker_registry import list_processes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--json", action="store_true", help="one JSON object for machines")
    parser.add_argument("--studies", type=int, default=20, help="how many recent studies to list")


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_human(status: dict[str, Any]) -> str:
    jobs, deliveries = status["jobs"], status["deliveries"]
    lines = [
        f"instances: {status['instances']} received, {status['results']} results",
        "jobs:       " + "  ".join(f"{k} {v}" for k, v in jobs.items()),
        "deliveries: " + "  ".join(f"{k} {v}" for k, v in deliveries.items()),
        "",
        f"{'study':<64}  {'accession':<16} {'received':>8} {'results':>7}  {'state':<15} last received",
    ]
    for s in status["studies"]:
        failed = s.get("images_failed", 0)
        lines.append(
            f"{s['study_instance_uid']:<64}  {s['accession_number']:<16} {s['instances']:>8} "
            f"{s['results']:>7}  {s['state']:<15} {_when(s['last_received_at'])}"
            + (f"  ({failed} image(s) not analysed)" if failed else "")
        )
    if not status["studies"]:
        lines.append("(no studies)")
    lines += ["", "analysis processes:"] + [_process_line(p) for p in status.get("analysis_processes", [])]
    if not status.get("analysis_processes"):
        lines.append("  (none running: start `cxr-node serve` with workers or `cxr-node worker`)")
    errors = status["errors"]
    if errors["jobs"] or errors["deliveries"]:
        lines += ["", "recent errors:"]
        for e in errors["jobs"]:
            head = (f"  job {e['job_id']} ({e['state']}, attempt {e['attempts']}) "
                    f"study {e['study_instance_uid']}")
            images = e.get("images") or []
            if not images:
                lines.append(f"{head}: {escape_control(str(e['error']))}")
                continue
            lines.append(f"{head}: {len(images)} image(s) not analysed")
            lines += [f"    image {i['sop_instance_uid']} ({i['stage']}): {escape_control(i['reason'])}"
                      for i in images]
        for e in errors["deliveries"]:
            lines.append(
                f"  delivery {e['delivery_id']} to {e['destination']} ({e['state']}, "
                f"attempt {e['attempts']}) {e['sop_instance_uid']}: {e['error']}"
            )
    return "\n".join(lines)


def _process_line(p: dict[str, Any]) -> str:
    models = ", ".join(f"{m['task']} {m['name']} {m['version']}" for m in p["models"]) or "(not reported)"
    stale = "  STALE (no heartbeat: process gone?)" if p["stale"] else ""
    return (f"  {p['owner']} {p['role']}, {p['threads']} thread(s) on {p['device'] or '?'}, models in "
            f"{p['models_dir']}: {models}; last seen {_when(p['seen_at'])}{stale}")


def add_worker_details(status: dict[str, Any], engine: Any) -> dict[str, Any]:
    """The analysis processes and their models; each job error split into its failed images."""
    status["analysis_processes"] = list_processes(engine)
    for e in status["errors"]["jobs"]:
        e["images"] = parse_image_failures(e.get("error"))
    failed = _images_failed(engine, [s["study_instance_uid"] for s in status["studies"]])
    for s in status["studies"]:
        s["images_failed"] = failed.get(s["study_instance_uid"], 0)
    return status


def _images_failed(engine: Any, studies: list[str]) -> dict[str, int]:
    """Images of each study that a job could not analyse (the per-image lines of its jobs' notes)."""
    j = Job.__table__.c
    counts: dict[str, int] = {}
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(j.study_instance_uid, j.error)
                                .where(j.study_instance_uid.in_(studies), j.error.is_not(None))).all()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database read failed: {exc.__class__.__name__}: {exc}") from exc
    for study, error in rows:
        counts[study] = counts.get(study, 0) + len(parse_image_failures(error))
    return counts


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        from node.process import open_existing_repository

        # The same query as the dashboard's (node.repository.status): one set of numbers everywhere.
        engine = open_existing_repository(config).engine
        status = add_worker_details(status_queries.overview(engine, max_studies=args.studies), engine)
    except NodeError as exc:
        print(f"cxr-node status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=None, default=str))
    else:
        print(format_human(status))
    return 0
