"""Adapter for ``../shared/data/nih_cxr14_talo`` (1,000 NIH ChestX-ray14 frontal images).

Layout: ``labels.csv`` (file, patient_id, covid, finding, view, projection, license),
``images_512/``, ``annotations/rsna_opacity_boxes.csv`` and ``annotations/nih_bbox_list_2017.csv``
(file, x512, y512, w512, h512: boxes on the 512 px grid of ``images_512``).
RSNA pneumonia images are NIH images, so ``image_key`` is the NIH file name in both adapters.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, finish, read_table, require_dir
from training.manifest import BoxLabel, ManifestRow

NAME = "shared_nih_talo"
DATASET = "nih_cxr14"


def _boxes(path: Path, label_column: str | None, default_label: str) -> dict[str, list[BoxLabel]]:
    out: dict[str, list[BoxLabel]] = {}
    if not path.is_file():
        return out
    for i, rec in enumerate(read_table(path, ("file", "x512", "y512", "w512", "h512")), start=2):
        x, y = float(cell(rec, "x512", path, i)), float(cell(rec, "y512", path, i))
        w, h = float(cell(rec, "w512", path, i)), float(cell(rec, "h512", path, i))
        label = rec.get(label_column, "") if label_column else default_label
        out.setdefault(rec["file"], []).append(BoxLabel(x, y, x + w, y + h, label or default_label))
    return out


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    require_dir(root / "images_512", "images_512")
    table = root / "labels.csv"
    boxes = _boxes(root / "annotations" / "rsna_opacity_boxes.csv", None, "Lung Opacity")
    for key, extra in _boxes(root / "annotations" / "nih_bbox_list_2017.csv", "finding", "NIH box").items():
        boxes.setdefault(key, []).extend(extra)
    rows = []
    for i, rec in enumerate(
        read_table(table, ("file", "patient_id", "covid", "finding", "view", "projection", "license")),
        start=2,
    ):
        rel = cell(rec, "file", table, i)
        rows.append(
            ManifestRow(
                image_path=str(root / rel),
                dataset=DATASET,
                patient_id=cell(rec, "patient_id", table, i),
                view=rec["view"],
                projection=rec["projection"],
                covid=rec["covid"],
                findings=[f for f in rec["finding"].split("|") if f and f != "No Finding"],
                boxes=boxes.get(rel, []),
                license=rec["license"],
                image_key=f"nih:{Path(rel).stem}",
            )
        )
    return finish(rows, hash_images=hash_images)
