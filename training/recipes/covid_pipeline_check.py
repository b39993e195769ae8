"""Black-box COVID-19 check through the whole pipeline (``ChestPipeline``, as the node runs it).

    .venv/bin/python -m training.recipes.covid_pipeline_check [--models models] \
        [--manifest runs/manifests/covid_multisource.csv] [--split test] [--per-source 0] [--out FILE]

Every image of the split goes through projection -> lungs -> COVID exactly as a DICOM would in the node
(PNG instead of DICOM); per source it reports how many frontal images were analysed, how many were
called COVID-19, and the median COVID-19 score. ``--per-source N`` takes the first N rows per source.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--manifest", type=Path, default=REPO / "runs/manifests/covid_multisource.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-source", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--md", type=Path, help="write the card lines (markdown) here")
    args = ap.parse_args(argv)

    from pipelines.chest import ChestPipeline
    from pipelines.image import load_image
    from training.manifest import read_manifest
    from training.tasks import COVID

    rows = [r for r in read_manifest(args.manifest) if r.split == args.split and COVID.accepts(r)]
    by_source: dict[str, list] = defaultdict(list)
    for r in rows:
        if not args.per_source or len(by_source[r.dataset]) < args.per_source:
            by_source[r.dataset].append(r)
    pipe = ChestPipeline.from_models_dir(args.models, device="cpu")
    report: dict = {"models": str(args.models), "manifest": str(args.manifest), "split": args.split,
                    "covid_model": f"{pipe.covid.bundle.info.name} {pipe.covid.bundle.info.version}",
                    "per_source": {}}
    for source, members in sorted(by_source.items()):
        entry: dict = {"n": len(members), "analysed": 0, "not_analysed": 0}
        for label in (0, 1):
            scores = []
            for r in (m for m in members if COVID.label_of(m) == label):
                res = pipe.analyze(load_image(r.image_path))
                if not res.analysed or res.covid is None:
                    entry["not_analysed"] += 1
                    continue
                entry["analysed"] += 1
                scores.append(res.covid.probability)
            if scores:
                s = np.asarray(scores)
                called = int((s >= pipe.covid.threshold).sum())
                entry["covid_19" if label else "negatives"] = {
                    "n": len(scores), "called_covid_19": called, "median_score": float(np.median(s)),
                }
        report["per_source"][source] = entry
        print(source, json.dumps(entry), flush=True)
    report["threshold"] = pipe.covid.threshold
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.md:
        args.md.write_text(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        f"**Through the whole pipeline** (`ChestPipeline.from_models_dir`, {report['covid_model']}, "
        f"threshold "
        f"{report['threshold']:.3f}; {report['split']} split, first images of each source):",
        "",
    ]
    for source, e in report["per_source"].items():
        parts = []
        for key, what in (("covid_19", "COVID-19 images"), ("negatives", "negative images")):
            if key in e:
                v = e[key]
                parts.append(f"{v['called_covid_19']} of {v['n']} {what} called COVID-19 "
                             f"(median score {v['median_score']:.2f})")
        lines.append(f"- {source}: " + "; ".join(parts) + (f"; {e['not_analysed']} not analysed"
                                                           if e["not_analysed"] else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
