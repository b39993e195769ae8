"""How often the lung-field witness (``pipelines.lung_field``) calls an image lateral-shaped, per dataset.

    .venv/bin/python -m training.recipes.lung_field_check [--data-root ../shared/data] \
        [--lungs models/lungs] [--min-width 0.45] [--max-second 0.40] [--per-dataset 0] \
        [--out runs/lung_field_check.json] [--md FILE] [--write-metadata]

Every labelled frontal and lateral image of the shared folders (ieee8023, NIH ChestX-ray14, OpenIST,
Kermany children) goes through the lungs bundle as the pipeline runs it (source grid, post-processed),
then through the witness. Reported per dataset and projection: images, how many the witness calls
lateral-shaped, and the images it calls so (the false laterals are worth looking at). The witness never
trained on anything, but its two numbers were set by looking at these images (the card says so).
``--write-metadata`` stores the rule and what it measured as ``lateral_field`` in the lungs bundle's
metadata.json, which turns the check on for that bundle (the weights and their sha256 are untouched).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bundle import load_bundle
from pipelines.image import load_image
from pipelines.lung_field import LateralFieldRule, lung_field_shape
from pipelines.tasks.lungs import LungSegmenter
from training.datasets import scan_dataset

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {
    "shared_ieee8023": "ieee8023_covid_cxr",
    "shared_nih_talo": "nih_cxr14_talo",
    "shared_openist": "openist_normal_lungmask",
    "shared_kermany_v7": "kermany_pediatric_v7",
}


def field_report(records: list[tuple[str, str, str, dict | None]]) -> dict:
    """{dataset: {projection: {n, lateral_like, share, called: [paths]}}} from (dataset, projection, path,
    shape) records."""
    report: dict = defaultdict(dict)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for dataset, projection, path, shape in records:
        groups[(dataset, projection)].append((path, shape))
    for (dataset, projection), members in sorted(groups.items()):
        called = [p for p, s in members if s is not None and s["lateral_like"]]
        widths = [s["largest_width"] for _, s in members if s is not None]
        report[dataset][projection] = {
            "n": len(members), "lateral_like": len(called), "share": len(called) / len(members),
            "empty_mask": sum(s is None for _, s in members),
            "largest_width_p5_p50_p95": [round(float(v), 3) for v in np.percentile(widths, [5, 50, 95])]
            if widths else [],
            "called": called,
        }
    return dict(report)


def measured(per_dataset: dict) -> str:
    """One line: laterals called / laterals, frontals called / frontals, over every dataset."""
    totals = {"lateral": [0, 0], "frontal": [0, 0]}
    for by_proj in per_dataset.values():
        for projection, e in by_proj.items():
            totals[projection][0] += e["lateral_like"]
            totals[projection][1] += e["n"]
    (lat_hit, lat_n), (front_hit, front_n) = totals["lateral"], totals["frontal"]
    return (f"{lat_hit} of {lat_n} laterals and {front_hit} of {front_n} frontals called lateral-shaped "
            f"({', '.join(sorted(per_dataset))}; training.recipes.lung_field_check)")


def write_rule(bundle_dir: Path, rule: Any, per_dataset: dict) -> None:
    """Add ``lateral_field`` to a lungs bundle's metadata.json (its weights and their sha256 untouched)."""
    path = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["lateral_field"] = {"min_width": rule.min_width, "max_second": rule.max_second,
                                 "measured": measured(per_dataset)}
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def markdown(report: dict) -> str:
    lines = ["| dataset | projection | images | called lateral-shaped | largest field width p5 / p50 / p95 |",
             "|---|---|---|---|---|"]
    for dataset, by_proj in report.items():
        for projection, e in by_proj.items():
            widths = " / ".join(f"{w:.2f}" for w in e["largest_width_p5_p50_p95"])
            lines.append(f"| {dataset} | {projection} | {e['n']} | {e['lateral_like']} ({e['share']:.1%}) "
                         f"| {widths} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--lungs", type=Path, default=REPO / "models" / "lungs")
    ap.add_argument("--min-width", type=float, default=0.45, help="largest field's share of the width")
    ap.add_argument("--max-second", type=float, default=0.40, help="next component's share of its area")
    ap.add_argument("--write-metadata", action="store_true",
                    help="store the rule and its figures as lateral_field in the lungs bundle's metadata")
    ap.add_argument("--per-dataset", type=int, default=0, help="first N images per dataset (0: all)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "lung_field_check.json")
    ap.add_argument("--md", type=Path, help="write the card table (markdown) here")
    args = ap.parse_args(argv)

    rule = LateralFieldRule(min_width=args.min_width, max_second=args.max_second)
    segmenter = LungSegmenter(load_bundle(args.lungs, "lungs"))
    records: list[tuple[str, str, str, dict | None]] = []
    for adapter, folder in FOLDERS.items():
        rows = [r for r in scan_dataset(adapter, args.data_root / folder, hash_images=False) if r.projection]
        if args.per_dataset:
            laterals = [r for r in rows if r.projection == "lateral"][: args.per_dataset]
            rows = [r for r in rows if r.projection == "frontal"][: args.per_dataset] + laterals
        for row in rows:
            lung = segmenter.predict([load_image(row.image_path)])[0]
            shape = lung_field_shape(lung.mask)
            records.append((row.dataset, row.projection, row.image_path, None if shape is None else {
                "largest_width": shape.largest_width, "second_to_largest": shape.second_to_largest,
                "lateral_like": rule.matches(shape)}))
    report = {"lungs": f"{segmenter.bundle.info.name} {segmenter.bundle.info.version}",
              "rule": {"min_width": rule.min_width, "max_second": rule.max_second},
              "per_dataset": field_report(records)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = markdown(report["per_dataset"])
    if args.md:
        args.md.write_text(table)
    if args.write_metadata:
        write_rule(args.lungs, rule, report["per_dataset"])
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
