"""Adapter for ``../shared/data/openist_normal_lungmask`` (274 normal adults with lung masks).

Layout: ``labels.csv`` (file, patient_id, covid, finding, view, projection, license, orig_path,
lung_mask), ``images_512/``, ``lung_masks_512/``. The masks EXCLUDE heart and mediastinum
(JSRT/Montgomery convention), unlike the V7 masks: keep the ``dataset`` column when mixing.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import scan_shared_labels
from training.manifest import ManifestRow

NAME = "shared_openist"
DATASET = "openist"


def _image_key(orig_path: str) -> str:
    return f"openist:{orig_path}"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    return scan_shared_labels(root, DATASET, _image_key, hash_images=hash_images)
