"""Adapter for BrixIA (Brescia, COVID-19 severity) as published.

Layout: ``metadata_global_v2.csv`` (semicolon-separated: Filename, StudyId, Subject, ...,
ConsensusTestset, BrixiaScore, BrixiaScoreGlobal) and ``dicom_clean/<Filename>`` (DICOM).
``BrixiaScore`` is six digits 0-3, one per lung zone A-F; every image is of a COVID-19 positive
patient. The score becomes findings "brixia_global=N" and "brixia_zones=ABCDEF".
"""

from __future__ import annotations

import re
from pathlib import Path

from training.datasets.base import cell, finish, read_table, require_dir
from training.datasets.dicom_tree import read_header
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "brixia"
DATASET = "brixia"
LICENSE = "BrixIA dataset: research use under the BrixIA data use agreement (CC BY-NC-SA)"
_SCORE = re.compile(r"^[0-3]{1,6}$")


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    images = require_dir(root / "dicom_clean", "dicom_clean")
    table = root / "metadata_global_v2.csv"
    rows = []
    for i, rec in enumerate(
        read_table(table, ("Filename", "BrixiaScore", "BrixiaScoreGlobal"), delimiter=";"), start=2
    ):
        score = cell(rec, "BrixiaScore", table, i)
        if not _SCORE.match(score):
            raise DatasetLayoutError(f"{table}:{i}: column 'BrixiaScore' {score!r} is not six digits 0-3")
        filename = cell(rec, "Filename", table, i)
        subject = rec.get("Subject") or rec.get("StudyId") or Path(filename).stem
        rows.append(
            ManifestRow(
                image_path=str(images / filename),
                dataset=DATASET,
                patient_id=f"brixia_{subject}",
                study_id=rec.get("StudyId", ""),
                covid="1",
                findings=[
                    "COVID-19",
                    f"brixia_zones={score.zfill(6)}",
                    f"brixia_global={cell(rec, 'BrixiaScoreGlobal', table, i)}",
                ],
                license=LICENSE,
                image_key=f"brixia:{filename}",
            )
        )
    out = finish(rows, hash_images=hash_images)
    for row in out:
        header = read_header(Path(row.image_path))
        row.view, row.projection = header.view, header.projection
    return out
