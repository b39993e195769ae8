"""Adapter for ``../shared/data/kermany_pediatric_v7`` (160 pediatric AP images with V7 lung masks).

Layout: ``labels.csv`` (file, patient_id, covid, finding, view, projection, license, orig_path,
lung_mask), ``images_512/``, ``lung_masks_v7_512/``. ``image_key`` is the Kermany release path,
the same key :mod:`training.datasets.kermany_pneumonia` gives the full published set.
Children from one hospital: as COVID negatives they invite a shortcut (data README).
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import scan_shared_labels
from training.manifest import ManifestRow

NAME = "shared_kermany_v7"
DATASET = "kermany_pediatric"


def _image_key(orig_path: str) -> str:
    return "kermany:" + "/".join(Path(orig_path).parts[-3:])


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    return scan_shared_labels(root, DATASET, _image_key, hash_images=hash_images)
