"""Fixtures of the pipelines tests: one pipeline on the random bundles, built once per session.

The random bundles come from tests/modelkit.py (shared with the node tests), ultralytics' state
folder (``state_dir``) from tests/conftest.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from modelkit import random_models_dir

from pipelines.chest import ChestPipeline


@pytest.fixture(scope="session")
def random_models(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    return random_models_dir(tmp_path_factory, state_dir)


@pytest.fixture(scope="session")
def pipeline(random_models: Path, state_dir: Path) -> ChestPipeline:
    return ChestPipeline.from_models_dir(random_models, device="cpu", state_dir=state_dir)


@pytest.fixture(scope="session")
def chest_dicom(dicom_samples: Path) -> Path:
    """A real 1024x1024 CR chest PA (JPEG baseline, MONOCHROME2, PixelSpacing 0.168 mm)."""
    return dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm"


@pytest.fixture(scope="session")
def chest_png(shared_data: Path) -> Path:
    """A real frontal chest PNG (ieee8023 collection, 8-bit, longest side 512)."""
    folder = shared_data / "ieee8023_covid_cxr"
    with open(folder / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["projection"] == "frontal" and (folder / row["image"]).is_file():
                return folder / row["image"]
    pytest.fail(f"no frontal PNG listed in {folder / 'labels.csv'}")
