"""The GGO training manifest with normal lungs as negatives (issue "Default models").

    .venv/bin/python -m training.recipes.ggo_manifest [--data-root ../shared/data] [--out runs/manifests]

Why: trained on the 93 GeneralBlockchain GGO masks alone (every image has GGO), the U-Net and YOLO
never saw a lung WITHOUT GGO and called ~50% of the lung GGO on normal adult radiographs. This adds
normal adults as negatives with an empty GGO mask (an all-zero PNG of the image's own size, written
under ``<out>/empty_ggo_masks``): OpenIST normals and NIH ChestX-ray14 "No Finding" images, 50 each
(seeded choice, one image per patient). Splits: the GeneralBlockchain rows keep the patient-level split
of ``shared_generalblockchain`` (seed 20260101, 70/15/15, as ``runs/ggo-unet/manifest.csv``); the
negatives get their own patient-level split with the same fractions and seed. The leakage check runs
on the merged manifest.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

N_PER_SOURCE = 50
SEED = 20260101


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/manifests"))
    parser.add_argument("--per-source", type=int, default=N_PER_SOURCE, help="negatives per source")
    parser.add_argument("--name", default="ggo_with_normals.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from PIL import Image

    from training.datasets import scan_dataset
    from training.manifest import write_manifest
    from training.splits import assign_splits, check_leakage, near_duplicate_pairs, thumbnails
    from training.tasks import GGO_SEGMENTATION

    gb = scan_dataset("shared_generalblockchain", args.data_root / "generalblockchain_cxr_seg")
    gb = [r for r in gb if GGO_SEGMENTATION.accepts(r)]
    links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(gb))]
    assign_splits(
        gb, fractions=(0.7, 0.15, 0.15), seed=SEED, stratum=GGO_SEGMENTATION.stratum, extra_links=links
    )

    rng = random.Random(SEED)
    negatives = []
    for adapter, folder, keep in (
        ("shared_openist", "openist_normal_lungmask", lambda r: True),
        ("shared_nih_talo", "nih_cxr14_talo", lambda r: not r.findings),
    ):
        scanned = scan_dataset(adapter, args.data_root / folder)
        rows = [r for r in scanned if keep(r) and r.projection != "lateral"]
        one_per_patient = {}
        for r in sorted(rows, key=lambda r: r.image_path):
            one_per_patient.setdefault(r.patient_id, r)
        chosen = rng.sample(sorted(one_per_patient.values(), key=lambda r: r.image_path), args.per_source)
        mask_dir = (args.out / "empty_ggo_masks" / folder).resolve()
        mask_dir.mkdir(parents=True, exist_ok=True)
        for r in chosen:
            with Image.open(r.image_path) as img:
                w, h = img.size
            path = mask_dir / f"{Path(r.image_path).stem}.png"
            Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(path)
            r.ggo_mask = str(path)
            r.split = ""
        negatives += chosen
    assign_splits(negatives, fractions=(0.7, 0.15, 0.15), seed=SEED, stratum=lambda rs: "none")
    rows = gb + negatives
    check_leakage(rows)
    write_manifest(rows, args.out / args.name)
    print(dict(sorted(Counter((r.dataset, r.split) for r in rows).items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
