"""The split manifests behind the shipped COVID-19 model (covid 2.1.0, ``training/configs/covid.toml``).

    .venv/bin/python -m training.recipes.covid_manifests [--data-root ../shared/data] [--out runs/manifests]

- ``covid_multisource.csv``: one patient-level, stratified, seeded split (seed 20260101, 70/15/15,
  near-identical pictures linked first) of the frontal ieee8023 + NIH ChestX-ray14 images with a
  COVID-19 label (NIH "No Finding" and "Pneumonia" negatives in train/validation/test), plus the 274
  OpenIST normal adults, a collection that is NEVER trained on: its patients are split 50/50 (seeded)
  into validation (an unseen-source normal check for the epoch choice) and test (the unseen-source
  normal check reported in the card).
- ``covid_unseen_kermany.csv``: the 160 Kermany pediatric images (normal, bacterial and viral
  pneumonia; all COVID-negative), every row in "test". No covid run trains or selects on them (a
  "child = negative" shortcut would otherwise be on offer); they are a second collection the covid
  models never saw (specificity on an unseen hospital).

Why: in these sources COVID-positive images come from other hospitals than the negatives, and a model
learns the source (data README, "What a naive model learns").
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections import Counter
from pathlib import Path

from training.datasets import scan_dataset
from training.errors import LeakageError
from training.manifest import ManifestRow, merge_manifests, write_manifest
from training.splits import (
    assign_splits,
    check_leakage,
    near_duplicate_leaks,
    near_duplicate_pairs,
    thumbnails,
)
from training.tasks import COVID

SOURCES = (("shared_ieee8023", "ieee8023_covid_cxr"), ("shared_nih_talo", "nih_cxr14_talo"))
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_SEED = 20260101


def covid_rows(adapter: str, folder: Path) -> list[ManifestRow]:
    return [r for r in scan_dataset(adapter, folder) if COVID.accepts(r)]


def split(rows: list[ManifestRow], fractions: tuple[float, float, float]) -> None:
    """Patient-level, stratified, seeded split in place; near-identical pictures linked first."""
    links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(rows))]
    assign_splits(rows, fractions=fractions, seed=SPLIT_SEED, stratum=COVID.stratum, extra_links=links)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/manifests"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    rows = [r for r in merge_manifests([scan_dataset(a, args.data_root / p) for a, p in SOURCES])
            if COVID.accepts(r)]
    split(rows, SPLIT_FRACTIONS)
    openist = covid_rows("shared_openist", args.data_root / "openist_normal_lungmask")
    split(openist, (0.0, 0.5, 0.5))
    multisource = [copy.copy(r) for r in rows] + openist
    kermany = covid_rows("shared_kermany_v7", args.data_root / "kermany_pediatric_v7")
    for r in kermany:
        r.split = "test"
    for name, variant in (("covid_multisource.csv", multisource), ("covid_unseen_kermany.csv", kermany)):
        check_leakage(variant)
        leaks = near_duplicate_leaks(variant)
        if leaks:
            raise LeakageError(f"{name}: {len(leaks)} near-identical pair(s) across splits", [])
        write_manifest(variant, args.out / name)
        counts = Counter((r.dataset, r.split, r.covid) for r in variant)
        print(name, dict(sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
