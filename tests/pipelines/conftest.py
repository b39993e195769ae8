"""Fixtures of the pipelines tests: random bundles and one pipeline, built once per session.

torch, MONAI and ultralytics are imported inside the fixtures (MONAI alone costs ~11 s on 2 cores),
so collecting the tests stays fast and only the tests that need them pay, once.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics' offline state for the whole session (it reads its environment once per process)."""
    return tmp_path_factory.mktemp("cxr-node-state")


@pytest.fixture(scope="session")
def random_models(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    from pipelines.testing import write_random_bundles

    models = tmp_path_factory.mktemp("random-models")
    write_random_bundles(models, seed=0, state_dir=state_dir)
    return models


@pytest.fixture(scope="session")
def pipeline(random_models: Path, state_dir: Path):  # type: ignore[no-untyped-def]
    from pipelines.chest import ChestPipeline

    return ChestPipeline.from_models_dir(random_models, device="cpu", state_dir=state_dir)


@pytest.fixture(scope="session")
def chest_dicom(dicom_samples: Path) -> Path:
    """A real 1024x1024 CR chest PA (JPEG baseline, MONOCHROME2, PixelSpacing 0.168 mm)."""
    return dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm"


@pytest.fixture(scope="session")
def chest_png(shared_data: Path) -> Path:
    """A real frontal chest PNG (ieee8023 collection, 8-bit, longest side 512)."""
    import csv

    folder = shared_data / "ieee8023_covid_cxr"
    with open(folder / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["projection"] == "frontal" and (folder / row["image"]).is_file():
                return folder / row["image"]
    pytest.fail(f"no frontal PNG listed in {folder / 'labels.csv'}")
