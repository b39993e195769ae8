"""Adapter for PadChest (BIMCV, Hospital San Juan de Alicante 2009-2017) as published.

Layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (ImageID, ImageDir, StudyID,
PatientID, Projection, ViewPosition_DICOM, Labels, ...) and the image folders ``<ImageDir>/<ImageID>``
(numbered 0..54, 16-bit PNG). ``Projection`` is PA, AP, AP_horizontal, L, COSTAL or EXCLUDE;
COSTAL/EXCLUDE rows are dropped. ``Labels`` is a Python-style list string. Pre-2018: COVID negative.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from training.datasets.base import cell, find_file, finish, projection_from_view, read_table
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

log = logging.getLogger(__name__)

NAME = "padchest"
DATASET = "padchest"
LICENSE = "PadChest Dataset Research Use Agreement (BIMCV)"
TABLES = (
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
    "PADCHEST_chest_x_ray_images_labels_160K.csv",
)


def parse_labels(raw: str, where: str) -> list[str]:
    if not raw or raw.lower() == "nan":
        return []
    try:
        labels = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise DatasetLayoutError(f"{where}: column 'Labels' is not a list literal: {raw[:60]!r}") from exc
    return [str(x).strip() for x in labels if str(x).strip() and str(x).strip() != "normal"]


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    table = find_file(root, TABLES, "PadChest labels CSV")
    rows = []
    for i, rec in enumerate(
        read_table(table, ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Labels")), start=2
    ):
        projection = rec["Projection"]
        if projection in ("COSTAL", "EXCLUDE"):
            continue
        image = root / cell(rec, "ImageDir", table, i) / cell(rec, "ImageID", table, i)
        rows.append(
            ManifestRow(
                image_path=str(image),
                dataset=DATASET,
                patient_id=f"padchest_{cell(rec, 'PatientID', table, i)}",
                study_id=rec["StudyID"],
                view=projection,
                projection=projection_from_view(projection),
                covid="0",
                findings=parse_labels(rec["Labels"], f"{table}:{i}"),
                license=LICENSE,
                image_key=f"padchest:{rec['ImageID']}",
            )
        )
    return finish(rows, hash_images=hash_images)
