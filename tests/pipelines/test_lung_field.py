"""The lung-field witness of the projection (pipelines/lung_field.py) and its gate in the chest pipeline."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import BundleError
from pipelines.lung_field import LateralFieldRule, lung_field_shape

SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"
RULE = LateralFieldRule(min_width=0.45, max_second=0.40)


def _mask(*boxes: tuple[int, int, int, int], shape: tuple[int, int] = (200, 200)) -> np.ndarray:
    """Boolean mask with filled boxes (row0, row1, col0, col1)."""
    mask = np.zeros(shape, dtype=bool)
    for r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = True
    return mask


@pytest.mark.parametrize(("mask", "lateral"), [
    (_mask((30, 170, 20, 90), (30, 170, 110, 180)), False),  # two lungs either side of the mediastinum
    (_mask((30, 170, 20, 90), (60, 90, 120, 140)), False),   # one white lung: the other is one side only
    (_mask((30, 170, 20, 90)), False),                       # a single narrow lung
    (_mask((30, 170, 30, 170)), True),                       # one field across the chest
    (_mask((30, 170, 30, 170), (10, 20, 10, 20)), True),     # ... with a speck beside it
    (_mask((30, 170, 10, 100), (30, 170, 102, 190)), False),  # a tight crop: two wide lungs
], ids=["frontal", "one-white-lung", "one-lung", "lateral", "lateral-speck", "tight-crop"])
def test_the_rule_calls_only_one_wide_field_lateral(mask: np.ndarray, lateral: bool) -> None:
    shape = lung_field_shape(mask)
    assert shape is not None and RULE.matches(shape) is lateral


def test_shape_figures_and_an_empty_mask() -> None:
    shape = lung_field_shape(_mask((30, 170, 20, 90), (30, 100, 110, 180)))
    assert shape is not None
    assert shape.largest_width == pytest.approx(70 / 200)
    assert shape.second_to_largest == pytest.approx((70 * 70) / (140 * 70))
    assert "35% of the image wide" in shape.describe()
    assert lung_field_shape(np.zeros((50, 50), dtype=bool)) is None


def test_a_full_size_mask_is_read_on_a_coarser_grid_with_the_same_figures() -> None:
    """A 2446 x 2010 CR mask is read on every 5th pixel: same shares to within a pixel's rounding."""
    import pipelines.lung_field as lung_field

    rng = np.random.default_rng(0)
    big = _mask((300, 2000, 210, 900), (500, 1500, 930, 1400), shape=(2446, 2010))  # a 30 px mediastinum
    big &= rng.random(big.shape) > 0.01  # ragged: vessels read as holes
    coarse = lung_field_shape(big)
    try:
        lung_field._GRID_PX = 10**6
        full = lung_field_shape(big)
    finally:
        lung_field._GRID_PX = 512
    assert coarse is not None and full is not None
    assert coarse.largest_width == pytest.approx(full.largest_width, abs=0.003)
    assert coarse.second_to_largest == pytest.approx(full.second_to_largest, abs=0.01)


def test_the_rule_is_read_from_metadata_and_checked() -> None:
    assert LateralFieldRule.from_metadata({}) is None
    rule = LateralFieldRule.from_metadata({"min_width": 0.5, "max_second": 0.3, "measured": "text"})
    assert rule == LateralFieldRule(0.5, 0.3)
    with pytest.raises(ValueError, match="needs min_width and max_second"):
        LateralFieldRule.from_metadata({"min_width": 0.5})
    with pytest.raises(ValueError, match="needs min_width and max_second"):
        LateralFieldRule.from_metadata({"min_width": 0.5, "max_second": 0.3, "width": 1})
    with pytest.raises(ValueError, match="max_second 1.5 not in"):
        LateralFieldRule.from_metadata({"min_width": 0.5, "max_second": 1.5})


def test_only_a_lungs_bundle_may_carry_a_rule(random_models: Path) -> None:
    from pipelines.bundle import read_metadata

    lungs = read_metadata(random_models / "random-lungs")
    assert lungs.lateral_field == {}  # random test bundles: no check
    data = {**json.loads((random_models / "random-covid" / "configs" / "metadata.json").read_text()),
            "lateral_field": {"min_width": 0.45, "max_second": 0.4}}
    from pipelines.bundle import BundleMetadata

    with pytest.raises(BundleError, match="lateral_field is for lungs bundles"):
        BundleMetadata.from_json(data)
    bad = {**json.loads((random_models / "random-lungs" / "configs" / "metadata.json").read_text()),
           "lateral_field": {"min_width": 0.0, "max_second": 0.4}}
    with pytest.raises(BundleError, match="min_width 0.0 not in"):
        BundleMetadata.from_json(bad)


def test_the_shipped_lungs_bundle_carries_its_measured_rule() -> None:
    from pipelines.bundle import read_metadata

    field = read_metadata(SHIPPED_MODELS / "lungs").lateral_field
    assert LateralFieldRule.from_metadata(field) == RULE
    assert "laterals" in field["measured"] and "frontals" in field["measured"]


@pytest.fixture(scope="module")
def field_models(random_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random bundles, the shipped rule added to the lungs bundle (whose mask is most of the image)."""
    models = tmp_path_factory.mktemp("field-models")
    shutil.copytree(random_models, models, dirs_exist_ok=True)
    path = models / "random-lungs" / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["lateral_field"] = {"min_width": RULE.min_width, "max_second": RULE.max_second}
    path.write_text(json.dumps(metadata))
    return models


def test_a_lateral_shaped_mask_stops_a_frontal_call(field_models: Path, state_dir: Path,
                                                    chest_png: Path) -> None:
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_image

    gated = ChestPipeline.from_models_dir(field_models, device="cpu", state_dir=state_dir)
    result = gated.analyze(load_image(chest_png))
    assert result.projection.projection.value == "frontal"
    assert not result.analysed
    assert result.not_analysed_reason.startswith("lateral projection by the shape of the lung mask (the lung "
                                                 "mask is one field 100% of the image wide")
    assert result.lungs is None and result.covid is None and result.ggo is None
    assert set(result.timings_ms) == {"projection", "total"}
    assert [w for w in result.warnings if w.endswith("; not analysed")]

    unchecked = ChestPipeline.from_models_dir(field_models, device="cpu", state_dir=state_dir,
                                              use_lung_field=False)
    result = unchecked.analyze(load_image(chest_png))
    assert result.analysed and result.covid is not None and result.lungs is not None
    assert any(w.endswith("analysed as frontal (lung-field check off)") for w in result.warnings)


def _ieee_images(shared_data: Path, projection: str, count: int) -> list[Path]:
    folder = shared_data / "ieee8023_covid_cxr"
    with open(folder / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["projection"] == projection]
    return [folder / r["image"] for r in rows[:: max(1, len(rows) // count)][:count]]


def test_the_shipped_lung_model_stops_real_laterals_a_frontal_call_let_through(
        pipeline, shared_data: Path, chest_dicom: Path) -> None:  # type: ignore[no-untyped-def]
    """A projection model that calls everything frontal and the SHIPPED lung model: real laterals stop,
    real frontals go on."""
    from pipelines.bundle import load_bundle
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_image
    from pipelines.tasks.lungs import LungSegmenter

    lungs = LungSegmenter(load_bundle(SHIPPED_MODELS / "lungs", "lungs"))
    chain = ChestPipeline(pipeline.projection, lungs, pipeline.covid, pipeline.ggo_detection,
                          pipeline.ggo_segmentation, device="cpu")
    laterals = [load_image(p) for p in _ieee_images(shared_data, "lateral", 4)]
    frontals = [load_image(p) for p in _ieee_images(shared_data, "frontal", 4)] + [load_image(chest_dicom)]
    results = chain.analyze_batch(laterals + frontals)
    assert all(r.projection.projection.value == "frontal" for r in results)  # the model is fooled
    assert [r.analysed for r in results] == [False] * len(laterals) + [True] * len(frontals)
    assert all(r.not_analysed_reason.startswith("lateral projection by the shape of the lung mask")
               for r in results[: len(laterals)])
    assert all(r.lungs is not None and r.lungs.area_px > 0 for r in results[len(laterals):])


def test_the_check_recipe_reports_and_writes_the_rule(shared_data: Path, tmp_path: Path) -> None:
    from training.recipes import lung_field_check

    lungs = tmp_path / "lungs"
    shutil.copytree(SHIPPED_MODELS / "lungs", lungs)
    (lungs / "configs" / "metadata.json").write_text(json.dumps(
        {k: v for k, v in json.loads((lungs / "configs" / "metadata.json").read_text()).items()
         if k != "lateral_field"}))
    out = tmp_path / "report.json"
    assert lung_field_check.main(["--data-root", str(shared_data), "--lungs", str(lungs),
                                  "--per-dataset", "3", "--out", str(out), "--write-metadata"]) == 0
    report = json.loads(out.read_text())["per_dataset"]
    assert report["ieee8023"]["lateral"]["n"] == 3 and report["ieee8023"]["lateral"]["lateral_like"] == 3
    assert all(e["frontal"]["lateral_like"] == 0 for e in report.values())
    assert set(report) == {"ieee8023", "nih_cxr14", "openist", "kermany_pediatric"}
    from pipelines.bundle import load_bundle

    written = load_bundle(lungs, "lungs").metadata.lateral_field  # still loads: sha256 of the weights kept
    assert written["min_width"] == 0.45
    assert written["measured"].startswith("3 of 3 laterals and 0 of 12 frontals")

