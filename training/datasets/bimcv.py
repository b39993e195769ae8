"""Adapters for BIMCV-COVID19+ and BIMCV-COVID- (Valencia region; MIDS/BIDS-like layout).

Layout of both: ``sub-<S>/ses-<E>/mod-rx/sub-<S>_ses-<E>_run-<n>_bp-chest_vp-<ap|pa|ll>_<cr|dx>.png``
each with a JSON sidecar of the same stem (DICOM header as DICOM JSON, PS3.18 F.2), a
``participants.tsv`` (column ``participant``) and optional report labels
``derivatives/labels/*.tsv`` (columns ``ReportID`` = session id, ``Labels`` = list string).
The + set is COVID-19 positive by PCR/antibody test, the - set negative: that is the label.
The view comes from the ``vp-`` entity, else the sidecar's ViewPosition (0018,5101).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from training.datasets.base import finish, projection_from_view, read_table
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

LICENSE = "BIMCV-COVID19 Research Use Agreement (CC BY 4.0 for research)"
_ENTITY = re.compile(r"(sub|ses|run|bp|vp)-([A-Za-z0-9]+)")


def _sidecar_view(path: Path) -> str:
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: JSON sidecar unreadable: {exc}") from exc
    value = header.get("00185101", {}).get("Value", [""]) if isinstance(header, dict) else [""]
    return str(value[0] if value else "")


def _report_labels(root: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    folder = root / "derivatives" / "labels"
    for table in sorted(folder.glob("*.tsv")) if folder.is_dir() else []:
        for i, rec in enumerate(read_table(table, ("ReportID", "Labels")), start=2):
            try:
                parsed = ast.literal_eval(rec["Labels"]) if rec["Labels"] else []
            except (ValueError, SyntaxError) as exc:
                raise DatasetLayoutError(f"{table}:{i}: column 'Labels' is not a list literal") from exc
            labels[rec["ReportID"]] = [str(x).strip() for x in parsed if str(x).strip() not in ("", "normal")]
    return labels


def scan_bimcv(root: Path, *, dataset: str, covid: str, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    participants = root / "participants.tsv"
    known = {r["participant"] for r in read_table(participants, ("participant",))}
    reports = _report_labels(root)
    rows = []
    for image in sorted(root.glob("sub-*/ses-*/mod-rx/*.png")):
        entities = dict(_ENTITY.findall(image.stem))
        if "sub" not in entities or "ses" not in entities:
            raise DatasetLayoutError(f"{image}: file name lacks the sub-/ses- entities")
        subject = f"sub-{entities['sub']}"
        if subject not in known:
            raise DatasetLayoutError(
                f"{image}: {subject} not listed in {participants} (column 'participant')"
            )
        sidecar = image.with_suffix(".json")
        if not sidecar.is_file():
            raise DatasetLayoutError(f"{sidecar}: JSON sidecar missing for {image.name}")
        view = entities.get("vp", "").upper() or _sidecar_view(sidecar)
        session = f"ses-{entities['ses']}"
        rows.append(
            ManifestRow(
                image_path=str(image),
                dataset=dataset,
                patient_id=f"bimcv_{subject}",
                study_id=session,
                view=view,
                projection=projection_from_view(view),
                covid=covid,
                findings=reports.get(session, reports.get(entities["ses"], [])),
                license=LICENSE,
                image_key=f"bimcv:{image.name}",
            )
        )
    if not rows:
        raise DatasetLayoutError(f"{root}: no sub-*/ses-*/mod-rx/*.png image found")
    return finish(rows, hash_images=hash_images)
