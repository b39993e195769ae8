"""Adapter for the RSNA Pneumonia Detection Challenge (2018) as published on Kaggle.

Layout: ``stage_2_train_labels.csv`` (patientId, x, y, width, height, Target: one row per box,
one row with empty box when Target is 0), optional ``stage_2_detailed_class_info.csv``
(patientId, class) and ``stage_2_train_images/<patientId>.dcm``. The ``patientId`` is really an
image id (one image each); the images are NIH ChestX-ray14 images. Boxes are in the DICOM's
1024 px grid. Pre-2018 images: COVID negative.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, finish, read_table, require_dir
from training.datasets.dicom_tree import read_header
from training.manifest import BoxLabel, ManifestRow

NAME = "rsna_pneumonia"
DATASET = "rsna_pneumonia"
LICENSE = "RSNA Pneumonia Detection Challenge data: non-commercial research use (RSNA terms), NIH CC images"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    images = require_dir(root / "stage_2_train_images", "stage_2_train_images")
    table = root / "stage_2_train_labels.csv"
    classes: dict[str, str] = {}
    info = root / "stage_2_detailed_class_info.csv"
    if info.is_file():
        classes = {r["patientId"]: r["class"] for r in read_table(info, ("patientId", "class"))}
    rows: dict[str, ManifestRow] = {}
    for i, rec in enumerate(read_table(table, ("patientId", "x", "y", "width", "height", "Target")), start=2):
        pid = cell(rec, "patientId", table, i)
        target = cell(rec, "Target", table, i)
        row = rows.get(pid)
        if row is None:
            findings = [classes[pid]] if classes.get(pid) and classes[pid] != "Normal" else []
            row = rows[pid] = ManifestRow(
                image_path=str(images / f"{pid}.dcm"),
                dataset=DATASET,
                patient_id=f"rsna_{pid}",
                covid="0",
                findings=findings,
                license=LICENSE,
                image_key=f"rsna:{pid}",
            )
        if target == "1":
            x, y = float(cell(rec, "x", table, i)), float(cell(rec, "y", table, i))
            w, h = float(cell(rec, "width", table, i)), float(cell(rec, "height", table, i))
            row.boxes.append(BoxLabel(x, y, x + w, y + h, "Lung Opacity"))
            if "Lung Opacity" not in row.findings:
                row.findings.append("Lung Opacity")
    out = finish(list(rows.values()), hash_images=hash_images)

    for row in out:  # the view is only in the DICOM header (ViewPosition AP/PA)
        header = read_header(Path(row.image_path))
        row.view, row.projection = header.view, header.projection
    return out
