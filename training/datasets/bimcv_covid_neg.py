"""BIMCV-COVID- (negative patients); the layout is described in :mod:`training.datasets.bimcv`."""

from __future__ import annotations

from pathlib import Path

from training.datasets.bimcv import scan_bimcv
from training.manifest import ManifestRow

NAME = "bimcv_covid_neg"


def scan(root: Path, *, hash_images: bool = True) -> list[ManifestRow]:
    return scan_bimcv(root, dataset="bimcv_covid19_neg", covid="0", hash_images=hash_images)
