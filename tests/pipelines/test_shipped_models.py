"""The shipped models in models/ on real images: sane outputs (issue "Default models").

Skipped only while models/ holds no bundle at all; once any bundle is there, a missing task or a
broken bundle fails here instead of hiding.
"""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path

import numpy as np
import pytest

# CXR_NODE_SHIPPED_MODELS points the test at candidate bundles before they are copied to models/.
REPO_MODELS = Path(os.environ.get("CXR_NODE_SHIPPED_MODELS", Path(__file__).resolve().parents[2] / "models"))


def _has_bundles() -> bool:
    return REPO_MODELS.is_dir() and any(REPO_MODELS.glob("*/configs/metadata.json"))


pytestmark = pytest.mark.skipif(not _has_bundles(), reason=f"no model bundle in {REPO_MODELS} yet")


@pytest.fixture(scope="module")
def shipped(state_dir: Path):  # type: ignore[no-untyped-def]
    from pipelines.chest import ChestPipeline

    return ChestPipeline.from_models_dir(REPO_MODELS, device="cpu", state_dir=state_dir)


def _ieee_rows(shared_data: Path, projection: str, count: int, with_mask: bool = False) -> list[dict]:
    with open(shared_data / "ieee8023_covid_cxr" / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["projection"] == projection
                and (not with_mask or r["v7_lung_mask"] == "1")]
    return rows[:: max(1, len(rows) // count)][:count]


def test_projection_on_real_frontal_and_lateral_images(shipped, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.image import load_image

    folder = shared_data / "ieee8023_covid_cxr"
    frontal = [load_image(folder / r["image"]) for r in _ieee_rows(shared_data, "frontal", 8)]
    lateral = [load_image(folder / r["image"]) for r in _ieee_rows(shared_data, "lateral", 6)]
    assert len(frontal) == 8 and len(lateral) == 6
    called = [r.projection.projection.value for r in shipped.analyze_batch(frontal + lateral)]
    assert called[: len(frontal)].count("frontal") >= len(frontal) - 1, called
    assert called[len(frontal):].count("lateral") >= len(lateral) - 1, called


def test_lung_masks_are_plausible_on_real_images(shipped, shared_data: Path, dicom_samples: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.image import load_image

    folder = shared_data / "ieee8023_covid_cxr"
    rows = _ieee_rows(shared_data, "frontal", 6, with_mask=True)
    images = [load_image(folder / r["image"]) for r in rows]
    images.append(load_image(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm"))
    results = shipped.analyze_batch(images)
    dices = []
    for row, image, result in zip(rows + [None], images, results, strict=True):
        assert result.analysed, result.source
        fraction = result.lungs.area_px / (image.shape[0] * image.shape[1])
        assert 0.10 < fraction < 0.65, (result.source, fraction)
        assert 0.0 <= result.covid.probability <= 1.0
        assert result.ggo.extent_percent is None or 0.0 <= result.ggo.extent_percent <= 100.0
        if row is not None:
            from PIL import Image

            truth = np.asarray(Image.open(folder / "lung_masks_v7_512" / Path(row["image"]).name)) > 127
            mask = result.lungs.mask
            dices.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    assert float(np.median(dices)) > 0.8, dices
    # A model that ignores its input (or a constant head) gives one probability for every image.
    probabilities = [r.covid.probability for r in results]
    assert max(probabilities) - min(probabilities) > 0.01, probabilities


def test_shipped_covid_model_is_withheld_for_children(shipped, dicom_samples: Path) -> None:  # type: ignore[no-untyped-def]
    """A real adult CR (Patient's Age 62) is assessed; the same pixels with a child's age are not."""
    from pipelines.image import load_dicom

    assert shipped.covid.bundle.metadata.min_patient_age_years == 18.0
    adult = load_dicom(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")
    assert str(adult.dataset.PatientAge).startswith("62")
    child_ds = copy.deepcopy(adult.dataset)
    child_ds.PatientAge = "005Y"
    child = load_dicom(child_ds)
    unknown_ds = copy.deepcopy(adult.dataset)
    del unknown_ds.PatientAge
    unknown = load_dicom(unknown_ds)
    adult_r, child_r, unknown_r = shipped.analyze_batch([adult, child, unknown])
    assert adult_r.covid is not None and not adult_r.warnings
    cautions = adult_r.to_json()["model_cautions"]  # the analyze --json record names the known failure modes
    assert set(cautions) == {adult_r.covid.model.name, adult_r.ggo.segmentation_model.name}
    assert "near chance" in cautions[adult_r.covid.model.name]
    assert unknown_r.covid is not None  # no age in the header: analysed as before
    assert unknown_r.covid.probability == pytest.approx(adult_r.covid.probability, abs=1e-5)
    assert child_r.covid is None
    assert any("not assessed" in w and "5 years" in w and "18 years" in w for w in child_r.warnings), \
        child_r.warnings
    # Every other finding is still reported for the child.
    assert child_r.analysed and child_r.lungs is not None and child_r.lungs.area_px == adult_r.lungs.area_px
    assert child_r.ggo is not None
