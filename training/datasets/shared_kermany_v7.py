"""Adapter for ``../shared/data/kermany_pediatric_v7`` (160 pediatric AP images with V7 lung masks).

Layout: ``labels.csv`` (file, patient_id, covid, finding, view, projection, license, orig_path,
lung_mask), ``images_512/``, ``lung_masks_v7_512/``. ``image_key`` is the Kermany release path,
the same key :mod:`training.datasets.kermany_pneumonia` gives the full published set.
Children from one hospital: as COVID negatives they invite a shortcut (data README).
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, finish, read_table, require_dir
from training.manifest import ManifestRow

NAME = "shared_kermany_v7"
DATASET = "kermany_pediatric"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    require_dir(root / "images_512", "images_512")
    table = root / "labels.csv"
    rows = []
    for i, rec in enumerate(
        read_table(
            table,
            (
                "file",
                "patient_id",
                "covid",
                "finding",
                "view",
                "projection",
                "license",
                "orig_path",
                "lung_mask",
            ),
        ),
        start=2,
    ):
        rows.append(
            ManifestRow(
                image_path=str(root / cell(rec, "file", table, i)),
                dataset=DATASET,
                patient_id=cell(rec, "patient_id", table, i),
                view=rec["view"],
                projection=rec["projection"],
                covid=rec["covid"],
                findings=[f for f in [rec["finding"]] if f and f != "No Finding"],
                lung_mask=str(root / rec["lung_mask"]) if rec["lung_mask"] else "",
                license=rec["license"],
                image_key="kermany:" + "/".join(Path(rec["orig_path"]).parts[-3:]),
            )
        )
    return finish(rows, hash_images=hash_images)
