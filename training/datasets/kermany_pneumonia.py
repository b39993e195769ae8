"""Adapter for Kermany et al. 2018 "Chest X-Ray Images (Pneumonia)" (Kaggle / Mendeley).

Layout: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. No label table: the class is
the folder; bacterial vs viral is in the file name (``person12_bacteria_47.jpeg``,
``person3_virus_15.jpeg``); normals are ``IM-0115-0001.jpeg`` / ``NORMAL2-IM-1427-0001.jpeg``.
Patient ids follow the shared folder's convention (``kermany_personN``, ``kermany_normal_IM-xxxx``),
so the two adapters link. Pediatric, one hospital, pre-2019: COVID negative, shortcut-prone.
The published split folders are ignored: our own patient-level split decides.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.datasets.base import finish, require_dir
from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

NAME = "kermany_pneumonia"
DATASET = "kermany_pediatric"
LICENSE = "CC BY 4.0 (Kermany, Zhang, Goldbaum 2018, Mendeley Data doi:10.17632/rscbjbr9sj.2)"
_PERSON = re.compile(r"^person(\d+)_(bacteria|virus)_\d+$", re.IGNORECASE)
_NORMAL = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-\d+$", re.IGNORECASE)


def patient_and_finding(path: Path) -> tuple[str, list[str]]:
    cls = path.parent.name.upper()
    m = _PERSON.match(path.stem)
    if cls == "PNEUMONIA" and m:
        return f"kermany_person{m.group(1)}", [
            "Pneumonia",
            "Bacterial" if m.group(2).lower() == "bacteria" else "Viral",
        ]
    m = _NORMAL.match(path.stem)
    if cls == "NORMAL" and m:
        return f"kermany_normal_{m.group(1)}", []
    raise DatasetLayoutError(f"{path}: file name does not follow the {cls} naming of the published set")


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    root = Path(root).resolve()
    base = root / "chest_xray" if (root / "chest_xray").is_dir() else root
    splits = [s for s in ("train", "val", "test") if (base / s).is_dir()]
    if not splits:
        raise DatasetLayoutError(f"{base}: expected chest_xray/{{train,val,test}}/{{NORMAL,PNEUMONIA}}")
    rows = []
    for split in splits:
        for cls in ("NORMAL", "PNEUMONIA"):
            folder = require_dir(base / split / cls, f"{split}/{cls}")
            for image in sorted(folder.iterdir()):
                if image.suffix.lower() not in (".jpeg", ".jpg", ".png"):
                    continue
                patient, findings = patient_and_finding(image)
                rows.append(
                    ManifestRow(
                        image_path=str(image),
                        dataset=DATASET,
                        patient_id=patient,
                        view="AP",
                        projection="frontal",
                        covid="0",
                        findings=findings,
                        license=LICENSE,
                        image_key=f"kermany:{split}/{cls}/{image.name}",
                    )
                )
    return finish(rows, hash_images=hash_images)
