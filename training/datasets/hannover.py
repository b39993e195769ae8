"""Adapter for the ML Hannover COVID-19 image repository (ml-workgroup/covid-19-image-repository).

Layout: ``data.csv`` (patient_id, image_id, sex, age, ..., modality, projection: ap/pa) and the
images ``png/<image_id>.png`` (the brief's ``cov-19-img/`` name is accepted too). Every patient
is a COVID-19 positive inpatient of Hannover Medical School. Its images are also in ieee8023:
``image_key`` cannot link them (different ids), so prefer one or the other in a merge.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import cell, find_file, finish, projection_from_view, read_table
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "hannover"
DATASET = "hannover"
LICENSE = "CC BY 3.0 (Hannover Medical School, ml-workgroup/covid-19-image-repository)"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    table = find_file(root, ("data.csv", "metadata.csv"), "Hannover metadata CSV")
    folder = next((root / n for n in ("png", "cov-19-img") if (root / n).is_dir()), None)
    if folder is None:
        raise DatasetLayoutError(f"{root}: expected the image folder png/ (or cov-19-img/)")
    rows = []
    for i, rec in enumerate(read_table(table, ("patient_id", "image_id", "modality", "projection")), start=2):
        image_id = cell(rec, "image_id", table, i)
        view = rec["projection"].upper()
        rows.append(
            ManifestRow(
                image_path=str(folder / f"{image_id}.png"),
                dataset=DATASET,
                patient_id=f"hannover_{cell(rec, 'patient_id', table, i)}",
                view=view,
                projection=projection_from_view(view),
                covid="1",
                findings=["COVID-19"],
                license=LICENSE,
                image_key=f"hannover:{image_id}",
            )
        )
    return finish(rows, hash_images=hash_images)
