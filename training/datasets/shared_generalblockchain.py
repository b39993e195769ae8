"""Adapter for ``../shared/data/generalblockchain_cxr_seg`` (radiologist GGO and lung masks).

Layout: ``images_1024/<sha>.png``, ``masks_1024/<sha>__<class>.png`` (classes include
ground_glass_opacities, left_lung, right_lung), ``mask_boxes.csv`` (image, orig_filename, cls,
...) and ``metadata.csv`` (the ieee8023 metadata rows of these pictures: patientid, finding,
view, filename, license).

97 of the 100 pictures are ieee8023 pictures: rows carry the ieee8023 patient id and
``image_key`` so that splits keep each patient's pictures together across both datasets.
The lung mask is the union of the left and right lung masks (``a|b`` in the manifest).
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, finish, projection_from_view, read_table, require_dir
from training.datasets.shared_ieee8023 import patient_key, split_findings
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "shared_generalblockchain"
DATASET = "generalblockchain"
LICENSE = "CC BY 4.0 (GeneralBlockchain masks); image license as in ieee8023 metadata"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    require_dir(root / "images_1024", "images_1024")
    masks = require_dir(root / "masks_1024", "masks_1024")
    boxes_csv = root / "mask_boxes.csv"
    meta_csv = root / "metadata.csv"
    orig_of: dict[str, str] = {}
    for i, rec in enumerate(read_table(boxes_csv, ("image", "orig_filename", "cls")), start=2):
        orig_of[cell(rec, "image", boxes_csv, i)] = cell(rec, "orig_filename", boxes_csv, i)
    meta = {
        rec["filename"]: rec
        for rec in read_table(meta_csv, ("patientid", "finding", "view", "filename", "license"))
    }
    rows = []
    for image_rel, orig in sorted(orig_of.items()):
        rec = meta.get(orig)
        if rec is None:
            raise DatasetLayoutError(f"{meta_csv}: no row with filename {orig!r} (listed in {boxes_csv})")
        stem = Path(image_rel).stem
        ggo = masks / f"{stem}__ground_glass_opacities.png"
        lungs = [masks / f"{stem}__{side}_lung.png" for side in ("left", "right")]
        finding = rec["finding"]
        rows.append(
            ManifestRow(
                image_path=str(root / image_rel),
                dataset=DATASET,
                patient_id=patient_key(rec["patientid"]),
                view=rec["view"],
                projection=projection_from_view(rec["view"]),
                covid="1" if "COVID-19" in finding else ("0" if finding else ""),
                findings=split_findings(finding),
                lung_mask="|".join(str(p) for p in lungs) if all(p.is_file() for p in lungs) else "",
                ggo_mask=str(ggo) if ggo.is_file() else "",
                license=rec["license"] or LICENSE,
                image_key=f"ieee8023:{orig}",
            )
        )
    return finish(rows, hash_images=hash_images)
