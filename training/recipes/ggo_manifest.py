"""The GGO training manifest with normal lungs as negatives (ggo_segmentation 1.0.0: ``--per-source 15``).

    .venv/bin/python -m training.recipes.ggo_manifest [--data-root ../shared/data] [--out runs/manifests]

Why: trained on the 93 GeneralBlockchain GGO masks alone (every image has GGO), the U-Net and YOLO
never saw a lung WITHOUT GGO and called ~50% of the lung GGO on normal adult radiographs. This adds
normal adults as negatives with an empty GGO mask (an all-zero PNG of the image's own size, written
under ``<out>/empty_ggo_masks``): OpenIST normals and NIH ChestX-ray14 "No Finding" images, 50 each
(seeded choice, one image per patient). Splits: the GeneralBlockchain rows keep the patient-level split
of ``shared_generalblockchain`` (seed 20260101, 70/15/15, as ``runs/ggo-unet/manifest.csv``); the
negatives get their own patient-level split with the same fractions and seed. The leakage check runs
on the merged manifest.

Options for measuring over-calls on normal lungs; without them the manifest is the one above:

- ``--heldout N``: BEFORE the negatives are drawn, N normal patients per source (OpenIST, NIH "No
  Finding", Kermany pediatric normals) and N ieee8023 COVID-19 frontal pictures that are not in
  GeneralBlockchain are set aside in ``<out>/<name minus .csv>_heldout.csv`` (split column "test"):
  no GGO run trains or chooses anything on them (``training.recipes.ggo_decision`` measures on them).
- ``--ieee-normals``: also the ieee8023 "No Finding" frontals (the collection the GGO masks come
  from, so that "looks like ieee8023" is not "has GGO"), with their own patient-level split.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from training.datasets import scan_dataset
from training.manifest import write_manifest
from training.splits import assign_splits, check_leakage, near_duplicate_pairs, thumbnails
from training.tasks import GGO_SEGMENTATION

REPO = Path(__file__).resolve().parents[2]

N_PER_SOURCE = 50
SEED = 20260101


def attach_empty_masks(rows: list, mask_dir: Path) -> None:
    """Give normal images an all-zero GGO mask of their own size (the segmentation trainer needs one)."""
    mask_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        with Image.open(r.image_path) as img:
            w, h = img.size
        path = mask_dir / f"{Path(r.image_path).stem}.png"
        Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(path)
        r.ggo_mask, r.split = str(path), ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/manifests"))
    parser.add_argument("--per-source", type=int, default=N_PER_SOURCE, help="negatives per source")
    parser.add_argument("--name", default="ggo_with_normals.csv")
    parser.add_argument("--heldout", type=int, default=0, help="held-out normals per source (and COVID)")
    parser.add_argument("--ieee-normals", action="store_true", help="add ieee8023 'No Finding' frontals")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    gb = scan_dataset("shared_generalblockchain", args.data_root / "generalblockchain_cxr_seg")
    gb = [r for r in gb if GGO_SEGMENTATION.accepts(r)]
    links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(gb))]
    assign_splits(
        gb, fractions=(0.7, 0.15, 0.15), seed=SEED, stratum=GGO_SEGMENTATION.stratum, extra_links=links
    )

    rng = random.Random(SEED)
    held_rng = random.Random(SEED + 1)
    heldout = []
    negatives = []
    for adapter, folder, keep in (
        ("shared_openist", "openist_normal_lungmask", lambda r: True),
        ("shared_nih_talo", "nih_cxr14_talo", lambda r: not r.findings),
    ):
        scanned = scan_dataset(adapter, args.data_root / folder)
        rows = [r for r in scanned if keep(r) and r.projection != "lateral"]
        if args.heldout:
            held = _held_out_patients(rows, args.heldout, held_rng)
            heldout += held
            held_patients = {r.patient_id for r in held}
            rows = [r for r in rows if r.patient_id not in held_patients]
        one_per_patient = {}
        for r in sorted(rows, key=lambda r: r.image_path):
            one_per_patient.setdefault(r.patient_id, r)
        chosen = rng.sample(sorted(one_per_patient.values(), key=lambda r: r.image_path), args.per_source)
        attach_empty_masks(chosen, (args.out / "empty_ggo_masks" / folder).resolve())
        negatives += chosen
    assign_splits(negatives, fractions=(0.7, 0.15, 0.15), seed=SEED, stratum=lambda rs: "none")
    ieee = scan_dataset("shared_ieee8023", args.data_root / "ieee8023_covid_cxr") if (
        args.ieee_normals or args.heldout) else []
    gb_patients, gb_keys = {r.patient_id for r in gb}, {r.image_key for r in gb}
    if args.ieee_normals:
        normals = [r for r in ieee if r.findings == ["No Finding"] and r.projection == "frontal"
                   and r.patient_id not in gb_patients and r.image_key not in gb_keys]
        attach_empty_masks(normals, (args.out / "empty_ggo_masks" / "ieee8023_covid_cxr").resolve())
        assign_splits(normals, fractions=(0.7, 0.15, 0.15), seed=SEED, stratum=lambda rs: "none")
        negatives += normals
    rows = gb + negatives
    check_leakage(rows)
    write_manifest(rows, args.out / args.name)
    if args.heldout:
        kermany = scan_dataset("shared_kermany_v7", args.data_root / "kermany_pediatric_v7")
        heldout += _held_out_patients([r for r in kermany if r.findings in ([], ["No Finding"])],
                                      args.heldout, held_rng)
        used_patients = {r.patient_id for r in rows}
        covid = [r for r in ieee if r.covid == "1" and r.projection == "frontal"
                 and r.patient_id not in used_patients and r.image_key not in gb_keys]
        heldout += _held_out_patients(covid, args.heldout, held_rng)
        for r in heldout:
            r.split = "test"
        assert not {r.patient_id for r in heldout} & used_patients, "held-out patient in the manifest"
        held_path = args.out / (Path(args.name).stem + "_heldout.csv")
        write_manifest(heldout, held_path)
        print("held out:", dict(sorted(Counter((r.dataset, r.covid) for r in heldout).items())), held_path)
    print(dict(sorted(Counter((r.dataset, r.split) for r in rows).items())))
    return 0


def _held_out_patients(rows: list, n: int, rng: random.Random) -> list:
    """One image for each of ``n`` seeded patients (all of them when there are fewer)."""
    one_per_patient = {}
    for r in sorted(rows, key=lambda r: r.image_path):
        one_per_patient.setdefault(r.patient_id, r)
    pool = sorted(one_per_patient.values(), key=lambda r: r.image_path)
    return rng.sample(pool, min(n, len(pool)))


if __name__ == "__main__":
    sys.exit(main())
