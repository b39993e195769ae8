"""Adapter for the TCIA COVID-19 chest radiograph collections (COVID-19-AR, COVID-19-NY-SBU,
MIDRC-RICORD-1C) as the NBIA Data Retriever writes them.

Layout: ``<Collection>/<Subject ID>/<study folder>/<series folder>/*.dcm`` and, when the
retriever wrote it, ``metadata.csv`` (Series UID, Collection, Subject ID, Study UID, Modality,
File Location, ...). Every patient of these collections had a positive SARS-CoV-2 test, so COVID
is 1; CT and other non-radiograph series are skipped from the DICOM headers themselves.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import finish, read_table
from training.datasets.dicom_tree import radiographs_under
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "tcia_covid"
DATASET = "tcia_covid"
LICENSE = (
    "TCIA: CC BY 4.0 (COVID-19-AR, MIDRC-RICORD-1C) / CC BY-NC 4.0 (COVID-19-NY-SBU); see the collection page"
)
NBIA_COLUMNS = ("Series UID", "Collection", "Subject ID", "Study UID", "Modality", "File Location")


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    meta = root / "metadata.csv"
    collection_of: dict[str, str] = {}
    if meta.is_file():
        for rec in read_table(meta, NBIA_COLUMNS):
            collection_of[rec["Subject ID"]] = rec["Collection"]
    headers = radiographs_under(root)
    if not headers:
        raise DatasetLayoutError(f"{root}: no CR/DX DICOM file found (expected <Collection>/<Subject>/...)")
    rows = []
    for h in headers:
        if not h.patient_id:
            raise DatasetLayoutError(f"{h.path}: PatientID (0010,0020) is empty")
        rel = h.path.relative_to(root).parts
        collection = collection_of.get(h.patient_id) or (rel[0] if len(rel) > 4 else DATASET)
        rows.append(
            ManifestRow(
                image_path=str(h.path),
                dataset=DATASET,
                source=collection,
                patient_id=f"tcia_{h.patient_id}",
                study_id=h.study_uid,
                view=h.view,
                projection=h.projection,
                covid="1",
                findings=["COVID-19"],
                license=LICENSE,
                image_key=f"tcia:{h.path.name}:{h.study_uid}",
            )
        )
    return finish(rows, hash_images=hash_images)
