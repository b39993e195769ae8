"""Adapter for ``../shared/data/ieee8023_covid_cxr`` (our downsampled copy of ieee8023).

Layout: ``labels.csv`` (image, orig_filename, patientid, finding, covid, view, projection,
v7_lung_mask, license), ``images_512/``, ``lung_masks_v7_512/<image name>`` where
``v7_lung_mask`` is 1. The lungVAE masks are model output, not ground truth, and are ignored.

The published metadata lists five pictures twice, under patient ids 285/339 and 287/340
(data README): those pairs are one patient each, and each picture is kept once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.datasets.base import cell, finish, read_table, require_dir
from training.manifest import ManifestRow

log = logging.getLogger(__name__)

NAME = "shared_ieee8023"
DATASET = "ieee8023"
# ieee8023 metadata assigns two ids to one person (see the data README); map each to one.
PATIENT_ALIASES = {"339": "285", "340": "287"}
UNSPECIFIED_LICENSE = "unspecified in the ieee8023 metadata: check the image's source url before reuse"
COLUMNS = (
    "image",
    "orig_filename",
    "patientid",
    "finding",
    "covid",
    "view",
    "projection",
    "v7_lung_mask",
    "license",
)


def patient_key(patientid: str) -> str:
    """The patient id shared by every adapter that re-publishes ieee8023 pictures."""
    pid = patientid.strip()
    return f"ieee8023_{PATIENT_ALIASES.get(pid, pid)}"


def split_findings(finding: str) -> list[str]:
    parts = [p.strip() for chunk in finding.replace("/", ",").split(",") for p in [chunk]]
    return [p for p in parts if p and p.lower() != "todo"]


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    table = root / "labels.csv"
    require_dir(root / "images_512", "images_512")
    rows: dict[str, ManifestRow] = {}
    for i, rec in enumerate(read_table(table, COLUMNS), start=2):
        image = root / cell(rec, "image", table, i)
        if str(image) in rows:
            continue  # listed twice under two patient ids (285/339, 287/340)
        lung = root / "lung_masks_v7_512" / image.name if rec["v7_lung_mask"] == "1" else None
        rows[str(image)] = ManifestRow(
            image_path=str(image),
            dataset=DATASET,
            patient_id=patient_key(cell(rec, "patientid", table, i)),
            view=rec["view"] if rec["view"] != "?" else "",
            projection=rec["projection"],
            covid=rec["covid"],
            findings=split_findings(rec["finding"]),
            lung_mask=str(lung) if lung else "",
            license=rec["license"] or UNSPECIFIED_LICENSE,
            image_key=f"ieee8023:{cell(rec, 'orig_filename', table, i)}",
        )
    return finish(list(rows.values()), hash_images=hash_images)
