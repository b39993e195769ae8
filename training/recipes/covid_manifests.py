"""The split manifests behind the shipped COVID-19 model (issue "Default models").

    .venv/bin/python -m training.recipes.covid_manifests [--data-root ../shared/data] [--out runs/manifests]

One patient-level, stratified, seeded split (seed 20260101, 70/15/15, near-identical pictures linked
first) of the frontal ieee8023 + NIH ChestX-ray14 images with a COVID-19 label, written twice:

- ``covid_mixed.csv``: that split as it is (NIH negatives in train/validation/test);
- ``covid_within.csv``: the same split with EVERY NIH row moved to test. Training and model
  selection then see ieee8023 only (COVID-19 vs other findings from the same collection), so "which
  collection is this" cannot predict the label; NIH becomes an external, all-negative test set that
  measures false positives and source reading. ieee8023 rows keep their split in both files.

- ``covid_multisource.csv``: the mixed split (ieee8023 and NIH rows keep their split: NIH "No
  Finding" and "Pneumonia" negatives in train/validation/test) plus the 274 OpenIST normal adults,
  a collection that is NEVER trained on: its patients are split 50/50 (seeded) into validation (an
  unseen-source normal check for epoch/candidate selection) and test (the unseen-source normal
  check reported in the card).

- ``covid_unseen_kermany.csv``: the 160 Kermany pediatric images (normal, bacterial and viral
  pneumonia; all COVID-negative), every row in "test". No covid run trains or selects on them (a
  "child = negative" shortcut would otherwise be on offer); they are a second collection the covid
  models never saw, for ``covid_pipeline_check --manifest`` (specificity on an unseen hospital).

- ``nih_finding.csv`` (measurement only): the NIH rows of ``covid_multisource.csv`` with their split,
  whose ``covid`` column is REPLACED by "any finding" (1 = "Pneumonia" or another finding, 0 = "No
  Finding"; ``training.finding_head.has_finding``). A covid run on it learns abnormal vs normal lungs inside
  one collection, where the collection cannot carry the label; scored on ieee8023 and OpenIST (which it
  never saw) it measures whether such a label carries to another collection
  (``training/configs/default/nih_finding_transfer.toml``). No shipped model trains on it.

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

REPO = Path(__file__).resolve().parents[2]


def nih_finding_rows(multisource: list) -> list:
    """Copies of the NIH rows, their split kept, labelled "any finding" in the ``covid`` column."""
    from training.finding_head import has_finding

    out = [copy.copy(r) for r in multisource if r.dataset == "nih_cxr14"]
    for r in out:
        r.covid = "1" if has_finding(r.findings) else "0"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "training/configs/default/covid_mixed.toml"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/manifests"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.config import load_config
    from training.data import collect_rows
    from training.errors import LeakageError
    from training.manifest import write_manifest
    from training.splits import (
        assign_splits,
        check_leakage,
        near_duplicate_leaks,
        near_duplicate_pairs,
        thumbnails,
    )
    from training.tasks import COVID

    cfg = load_config(args.config, data_root=args.data_root)
    cfg.data.manifest = ""
    rows = [r for r in collect_rows(cfg) if COVID.accepts(r)]
    links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(rows))]
    assign_splits(
        rows, fractions=cfg.data.split_fractions, seed=cfg.data.split_seed, stratum=COVID.stratum,
        extra_links=links,
    )
    within = [copy.copy(r) for r in rows]
    for r in within:
        if r.dataset != "ieee8023":
            r.split = "test"
    from training.data import resolve_data_path
    from training.datasets import scan_dataset

    openist = [r for r in scan_dataset("shared_openist", resolve_data_path(cfg, "openist_normal_lungmask"))
               if COVID.accepts(r)]
    o_links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(openist))]
    assign_splits(openist, fractions=(0.0, 0.5, 0.5), seed=cfg.data.split_seed, stratum=COVID.stratum,
                  extra_links=o_links)
    multisource = [copy.copy(r) for r in rows] + openist
    kermany = [r for r in scan_dataset("shared_kermany_v7", resolve_data_path(cfg, "kermany_pediatric_v7"))
               if COVID.accepts(r)]
    for r in kermany:
        r.split = "test"
    for name, variant in (("covid_mixed.csv", rows), ("covid_within.csv", within),
                          ("covid_multisource.csv", multisource), ("covid_unseen_kermany.csv", kermany),
                          ("nih_finding.csv", nih_finding_rows(multisource))):
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
