"""Shared reader for datasets published as DICOM trees (TCIA collections, HM Hospitales, BRIXIA).

Only the header is read (``stop_before_pixels``): scanning tens of thousands of files must not
decode pixel data. Radiographs are CR, DX or DX-like secondary captures (PS3.3 A.2, A.26, A.8);
other modalities (CT, SR, SEG) in a mixed study tree are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from training.datasets.base import projection_from_view
from training.errors import DatasetLayoutError

log = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")


@dataclass
class DicomHeader:
    path: Path
    patient_id: str
    study_uid: str
    modality: str
    view: str
    projection: str
    body_part: str


def read_header(path: Path) -> DicomHeader:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: not a readable DICOM file: {exc}") from exc
    view = str(ds.get("ViewPosition", "") or "")
    return DicomHeader(
        path=path,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        view=view,
        projection=projection_from_view(view),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
    )


def radiographs_under(root: Path) -> list[DicomHeader]:
    """Headers of every CR/DX file under ``root`` (``*.dcm`` or suffix-less files with a DICM preamble)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() != ".dcm":
            if path.suffix or not _has_preamble(path):
                continue
        header = read_header(path)
        if header.modality not in RADIOGRAPH_MODALITIES:
            log.debug("%s: modality %s skipped", path, header.modality)
            continue
        found.append(header)
    return found


def _has_preamble(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"
