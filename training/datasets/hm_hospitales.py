"""Adapter for HM Hospitales "COVID Data Save Lives" (CDSL) radiographs.

Layout: the main patient table ``COVID_DSL_01.CSV`` (semicolon-separated, column ``PATIENT ID``
and the diagnosis columns ``DIAG ING/INPAT``) and a DICOM tree ``IMAGES/<PATIENT ID>/...``.
Admissions were "COVID POSITIVE or COVID PENDING": COVID is 1 only where the diagnosis column
names COVID-19 / positive, otherwise unknown. Non-radiograph series are skipped.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import find_file, finish, read_table, require_dir
from training.datasets.dicom_tree import radiographs_under
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "hm_hospitales"
DATASET = "hm_hospitales"
LICENSE = "HM Hospitales COVID Data Save Lives: research use under the HM data use agreement"
DIAGNOSIS_COLUMN = "DIAG ING/INPAT"


def covid_from_diagnosis(text: str) -> str:
    """1 for a confirmed/positive COVID-19 diagnosis, 0 for a negative one, "" for pending or other."""
    t = text.upper()
    if "PENDIENTE" in t or "PENDING" in t or "COVID" not in t:
        return ""
    if "NEGATIV" in t:
        return "0"
    return "1" if "POSITIV" in t or "CONFIRM" in t else ""


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    table = find_file(root, ("COVID_DSL_01.CSV", "COVID_DSL_01.csv"), "CDSL patient table")
    records = read_table(table, ("PATIENT ID", DIAGNOSIS_COLUMN), delimiter=";")
    patients = {r["PATIENT ID"]: r for r in records}
    images = require_dir(root / "IMAGES", "IMAGES")
    rows = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        rec = patients.get(folder.name)
        if rec is None:
            raise DatasetLayoutError(f"{folder}: patient folder has no row in {table} (column 'PATIENT ID')")
        for h in radiographs_under(folder):
            rows.append(
                ManifestRow(
                    image_path=str(h.path),
                    dataset=DATASET,
                    patient_id=f"hm_{folder.name}",
                    study_id=h.study_uid,
                    view=h.view,
                    projection=h.projection,
                    covid=covid_from_diagnosis(rec[DIAGNOSIS_COLUMN]),
                    license=LICENSE,
                    image_key=f"hm:{h.path.relative_to(images)}",
                )
            )
    if not rows:
        raise DatasetLayoutError(f"{images}: no CR/DX DICOM file in any patient folder")
    return finish(rows, hash_images=hash_images)
