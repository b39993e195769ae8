"""``cxr-node datasets``: scan public chest X-ray datasets into manifests, merge, split, check.

    cxr-node datasets list
    cxr-node datasets scan NAME PATH --out manifest.csv
    cxr-node datasets merge A.csv B.csv --out all.csv
    cxr-node datasets split all.csv --out split.csv [--seed 0] [--task covid]
    cxr-node datasets check split.csv          (leakage check; exit 1 on a leak)

Every command that writes a manifest prints the summary table (counts per dataset, projection,
COVID label, masks, boxes, split). A layout that differs from the published one exits with
status 2 and a message naming the file and column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the dataset adapters")
    scan = sub.add_parser("scan", help="read one dataset in its published layout into a manifest")
    scan.add_argument("name", help="adapter name (see `datasets list`)")
    scan.add_argument("path", type=Path, help="the dataset folder")
    scan.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    scan.add_argument(
        "--no-hash", action="store_true", help="skip content hashes (faster; weaker leakage check)"
    )
    merge = sub.add_parser("merge", help="concatenate manifests (a file listed twice is kept once)")
    merge.add_argument("manifests", type=Path, nargs="+")
    merge.add_argument("--out", type=Path, required=True)
    split = sub.add_parser("split", help="patient-level, stratified, seeded train/validation/test split")
    split.add_argument("manifest", type=Path)
    split.add_argument("--out", type=Path, required=True)
    split.add_argument("--seed", type=int, default=0)
    split.add_argument(
        "--fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST")
    )
    split.add_argument("--task", default="covid", help="stratify as this task does (default covid)")
    split.add_argument(
        "--no-near-duplicates", action="store_true", help="do not link near-identical pictures"
    )
    check = sub.add_parser("check", help="leakage check of a split manifest (patients, hashes, pictures)")
    check.add_argument("manifest", type=Path)
    check.add_argument("--near-duplicates", action="store_true", help="also compare 32x32 thumbnails")


def run(args: argparse.Namespace) -> int:
    from training.datasets import ADAPTERS, scan_dataset
    from training.errors import LeakageError, TrainingError
    from training.manifest import merge_manifests, read_manifest, summary_table, write_manifest

    try:
        if args.action == "list":
            for name, module in ADAPTERS.items():
                print(f"{name:<26} {module}")
            return 0
        if args.action == "scan":
            rows = scan_dataset(args.name, args.path, hash_images=not args.no_hash)
        elif args.action == "merge":
            rows = merge_manifests([read_manifest(p) for p in args.manifests])
        elif args.action == "split":
            rows = _split(args, read_manifest(args.manifest))
        else:
            return _check(args, read_manifest(args.manifest))
    except LeakageError as exc:
        print(f"leakage: {exc}", file=sys.stderr)
        return 1
    except (TrainingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_manifest(rows, args.out)
    print(summary_table(rows))
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def _split(args: argparse.Namespace, rows: list) -> list:
    from training.splits import assign_splits, near_duplicate_pairs, thumbnails
    from training.tasks import TASK_SPECS

    if args.task not in TASK_SPECS:
        raise ValueError(f"--task {args.task!r} not in {sorted(TASK_SPECS)}")
    links = [] if args.no_near_duplicates else [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(rows))]
    return assign_splits(
        rows,
        fractions=args.fractions,
        seed=args.seed,
        stratum=TASK_SPECS[args.task].stratum,
        extra_links=links,
    )


def _check(args: argparse.Namespace, rows: list) -> int:
    from training.splits import check_leakage, near_duplicate_leaks

    check_leakage(rows)
    if args.near_duplicates:
        leaks = near_duplicate_leaks(rows)
        for a, b, r in leaks:
            print(
                f"near-identical across splits (r={r:.4f}): {rows[a].image_path} [{rows[a].split}] ~ "
                f"{rows[b].image_path} [{rows[b].split}]",
                file=sys.stderr,
            )
        if leaks:
            return 1
    print(f"no leakage across splits in {args.manifest} ({len(rows)} rows)")
    return 0
