"""Adapter for CheXpert (Stanford) as published: ``CheXpert-v1.0[-small]/{train,valid}.csv``.

Columns: Path, Sex, Age, Frontal/Lateral, AP/PA, then the 14 observations with 1 (positive),
0 (negative), -1 (uncertain) or blank (not mentioned). ``Path`` is relative to the folder that
*contains* the dataset folder (e.g. ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``).
Studies are 2002-2017: COVID-19 is negative by date. Uncertain (-1) findings are not listed.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, finish, read_table
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "chexpert"
DATASET = "chexpert"
LICENSE = "Stanford University School of Medicine CheXpert Dataset Research Use Agreement"
OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    tables = [root / name for name in ("train.csv", "valid.csv") if (root / name).is_file()]
    if not tables:
        raise DatasetLayoutError(f"{root}: expected train.csv and/or valid.csv (CheXpert layout)")
    rows = []
    for table in tables:
        records = read_table(table, ("Path", "Frontal/Lateral", "AP/PA") + OBSERVATIONS)
        for i, rec in enumerate(records, start=2):
            rel = Path(cell(rec, "Path", table, i))
            parts = rel.parts
            if len(parts) < 4 or not parts[-3].startswith("patient"):
                raise DatasetLayoutError(
                    f"{table}:{i}: column 'Path' {rel} is not <set>/<split>/patientN/studyM/viewK"
                )
            image = root.parent / rel if parts[0] == root.name else root / Path(*parts[1:])
            fl = cell(rec, "Frontal/Lateral", table, i)
            rows.append(
                ManifestRow(
                    image_path=str(image),
                    dataset=DATASET,
                    patient_id=f"chexpert_{parts[-3]}",
                    study_id=f"{parts[-3]}/{parts[-2]}",
                    view=rec["AP/PA"] or ("L" if fl == "Lateral" else ""),
                    projection={"Frontal": "frontal", "Lateral": "lateral"}.get(fl, ""),
                    covid="0",
                    findings=[o for o in OBSERVATIONS[1:] if rec.get(o) in ("1", "1.0")],
                    license=LICENSE,
                    image_key=f"chexpert:{'/'.join(parts[-4:])}",
                )
            )
    return finish(rows, hash_images=hash_images)
