"""Adapter for ieee8023/covid-chestxray-dataset as published on GitHub.

Layout: ``metadata.csv`` (patientid, finding, view, modality, folder, filename, license, location,
...), ``images/<filename>``, ``annotations/``. Only ``modality == X-ray`` rows are used (the set
also holds CT slices). ``finding`` is "COVID-19" in early releases and a path such as
"Pneumonia/Viral/COVID-19" later; "todo" means not yet labelled, so COVID is unknown.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, finish, projection_from_view, read_table, require_dir
from training.datasets.shared_ieee8023 import UNSPECIFIED_LICENSE, patient_key, split_findings
from training.manifest import ManifestRow

NAME = "ieee8023"
DATASET = "ieee8023"
COLUMNS = ("patientid", "finding", "view", "modality", "folder", "filename", "license")


def covid_label(finding: str) -> str:
    if not finding or finding.strip().lower() == "todo":
        return ""
    return "1" if "COVID-19" in finding else "0"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    table = root / "metadata.csv"
    require_dir(root / "images", "images")
    rows: dict[str, ManifestRow] = {}
    for i, rec in enumerate(read_table(table, COLUMNS), start=2):
        if rec["modality"] != "X-ray":
            continue
        filename = cell(rec, "filename", table, i)
        image = root / (rec["folder"] or "images") / filename
        if str(image) in rows:
            continue
        rows[str(image)] = ManifestRow(
            image_path=str(image),
            dataset=DATASET,
            patient_id=patient_key(cell(rec, "patientid", table, i)),
            view=rec["view"],
            projection=projection_from_view(rec["view"]),
            covid=covid_label(rec["finding"]),
            findings=split_findings(rec["finding"]),
            license=rec["license"] or UNSPECIFIED_LICENSE,
            source=f"{DATASET}",
            image_key=f"ieee8023:{filename}",
        )
    return finish(list(rows.values()), hash_images=hash_images)
