"""Dataset adapters: one module per published dataset layout, one manifest for all.

Each adapter module has ``NAME`` and ``scan(root, *, hash_images=True) -> list[ManifestRow]``;
modules are imported only when chosen. ``shared_*`` adapters read the downsampled copies in
``../shared/data`` (see its README).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from training.errors import DatasetLayoutError
from training.manifest import ManifestRow

ADAPTERS: dict[str, str] = {
    # the eleven public datasets, in their published layouts
    "bimcv_covid_pos": "training.datasets.bimcv_covid_pos",
    "bimcv_covid_neg": "training.datasets.bimcv_covid_neg",
    "brixia": "training.datasets.brixia",
    "hannover": "training.datasets.hannover",
    "tcia_covid": "training.datasets.tcia_covid",
    "hm_hospitales": "training.datasets.hm_hospitales",
    "ieee8023": "training.datasets.ieee8023",
    "padchest": "training.datasets.padchest",
    "chexpert": "training.datasets.chexpert",
    "rsna_pneumonia": "training.datasets.rsna_pneumonia",
    "kermany_pneumonia": "training.datasets.kermany_pneumonia",
    # the folders of ../shared/data
    "shared_ieee8023": "training.datasets.shared_ieee8023",
    "shared_generalblockchain": "training.datasets.shared_generalblockchain",
    "shared_nih_talo": "training.datasets.shared_nih_talo",
    "shared_kermany_v7": "training.datasets.shared_kermany_v7",
    "shared_openist": "training.datasets.shared_openist",
}

# folder name in ../shared/data -> adapter
SHARED_FOLDERS: dict[str, str] = {
    "ieee8023_covid_cxr": "shared_ieee8023",
    "generalblockchain_cxr_seg": "shared_generalblockchain",
    "nih_cxr14_talo": "shared_nih_talo",
    "kermany_pediatric_v7": "shared_kermany_v7",
    "openist_normal_lungmask": "shared_openist",
}


def scan_dataset(name: str, root: Path | str, *, hash_images: bool = True) -> list[ManifestRow]:
    """Run the adapter ``name`` on the folder ``root``."""
    if name not in ADAPTERS:
        raise DatasetLayoutError(f"unknown dataset adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset folder not found (adapter {name})")
    module = importlib.import_module(ADAPTERS[name])
    return module.scan(root, hash_images=hash_images)
