"""The real ChestPipeline (tiny random bundles) on a real CR, written as DICOM and read back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from result_sets import run_tool

from node.results import build_result_objects
from node.results.seg import GGO_SEGMENT, LUNG_SEGMENT
from node.results.sr import OHIF_BOX_TRACKING_IDENTIFIER, TRACKING_COVID, box_polyline


@pytest.mark.slow
def test_random_pipeline_result_written_and_read_back(dicom_samples: Path, tmp_path: Path) -> None:
    from pipelines.chest import ChestPipeline  # torch/monai: imported only by this test
    from pipelines.image import load_dicom
    from pipelines.testing import write_random_bundles

    models = tmp_path / "models"
    write_random_bundles(models, seed=3, state_dir=tmp_path / "state")
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=tmp_path / "state")
    source_path = dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm"
    source = pydicom.dcmread(source_path)
    result = pipeline.analyze(load_dicom(source))
    assert result.analysed and result.lungs is not None

    objects = build_result_objects(source, result)
    paths = []
    for obj in objects:
        paths.append(tmp_path / f"{obj.Modality}.dcm")
        obj.save_as(paths[-1], enforce_file_format=True)
    for path in paths:
        output = run_tool(["dciodvfy", "-new", str(path)])
        errors = [ln for ln in output.splitlines() if ln.startswith("Error")]
        assert not errors, (path.name, errors)

    seg = hd.seg.segread(paths[0])
    segments = [LUNG_SEGMENT] + ([GGO_SEGMENT] if result.ggo is not None else [])
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID],
                                               segment_numbers=segments)[0]
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), result.lungs.mask)
    if result.ggo is not None:
        np.testing.assert_array_equal(pixels[..., 1].astype(bool), result.ggo.mask)

    groups = hd.sr.srread(paths[1]).content.get_image_measurement_groups()
    if result.covid is not None:
        (covid,) = [g for g in groups if g.tracking_identifier == TRACKING_COVID]
        assert covid.get_measurements()[0].value == pytest.approx(result.covid.probability, abs=1e-6)
    boxes = [g for g in groups if g.tracking_identifier == OHIF_BOX_TRACKING_IDENTIFIER]
    expected = [] if result.ggo is None else result.ggo.boxes
    assert len(boxes) == len(expected)
    for group, box in zip(boxes, expected, strict=True):
        scoord = group.get_measurements()[0].referenced_coordinates[0]
        points = np.asarray(scoord.GraphicData).reshape(-1, 2)
        np.testing.assert_allclose(points, box_polyline(box), atol=1e-3)


@pytest.mark.slow
def test_child_gets_results_without_a_covid_finding(dicom_samples: Path, tmp_path: Path) -> None:
    """A covid bundle for adults only: a child's image gets SEG, SR and SC, no COVID-19 group, and the why."""
    import json

    from pipelines.chest import ChestPipeline
    from pipelines.image import load_dicom
    from pipelines.testing import write_random_bundles

    models = tmp_path / "models"
    write_random_bundles(models, seed=4, state_dir=tmp_path / "state")
    meta_path = models / "random-covid" / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["min_patient_age_years"] = 18
    meta_path.write_text(json.dumps(meta))
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=tmp_path / "state")
    source = pydicom.dcmread(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")
    source.PatientAge = "007Y"
    result = pipeline.analyze(load_dicom(source))
    assert result.analysed  # seeded random bundles: this image is called frontal
    assert result.covid is None and result.lungs is not None

    objects = build_result_objects(source, result)
    assert len(objects) == 3  # SEG, SR and the secondary capture, as for an adult
    for obj in objects:
        path = tmp_path / f"{obj.Modality}.dcm"
        obj.save_as(path, enforce_file_format=True)
        output = run_tool(["dciodvfy", "-new", str(path)])
        assert not [ln for ln in output.splitlines() if ln.startswith("Error")], path.name
    sr = next(o for o in objects if o.Modality == "SR")
    groups = hd.sr.srread(tmp_path / "SR.dcm").content.get_image_measurement_groups()
    assert not [g for g in groups if g.tracking_identifier == TRACKING_COVID]
    notes = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any("not assessed" in n and "7 years" in n for n in notes), notes


@pytest.mark.slow
def test_a_lateral_view_position_gets_an_sr_that_says_why(dicom_samples: Path, tmp_path: Path) -> None:
    """The model calls the image frontal, the header says LL: SR only, naming both, and it validates."""
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_dicom
    from pipelines.testing import write_random_bundles

    models = tmp_path / "models"
    write_random_bundles(models, seed=3, state_dir=tmp_path / "state")
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=tmp_path / "state")
    source = pydicom.dcmread(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")
    source.ViewPosition = "LL"
    result = pipeline.analyze(load_dicom(source))
    assert not result.analysed and result.projection.view_position == "LL"

    (sr,) = build_result_objects(source, result)
    assert sr.Modality == "SR"
    sr.save_as(tmp_path / "SR.dcm", enforce_file_format=True)
    output = run_tool(["dciodvfy", "-new", str(tmp_path / "SR.dcm")])
    assert not [ln for ln in output.splitlines() if ln.startswith("Error")]
    notes = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any(n.startswith("Image not analysed: lateral projection by the DICOM header (View Position LL)")
               for n in notes), notes
    assert any(n.startswith("Pipeline warning: projection: the DICOM View Position LL says lateral")
               for n in notes), notes


@pytest.mark.slow
def test_a_lateral_shaped_lung_mask_gets_an_sr_that_says_why(dicom_samples: Path, tmp_path: Path) -> None:
    """The model calls the image frontal, the lung mask is one field across the chest (the lungs bundle's
    lateral_field rule): SR only, naming both, and it validates."""
    import json

    from pipelines.chest import ChestPipeline
    from pipelines.image import load_dicom
    from pipelines.testing import write_random_bundles

    models = tmp_path / "models"
    write_random_bundles(models, seed=3, state_dir=tmp_path / "state")  # its lung mask: most of the image
    path = models / "random-lungs" / "configs" / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "lateral_field": {"min_width": 0.45, "max_second": 0.4}}))
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=tmp_path / "state")
    source = pydicom.dcmread(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")
    result = pipeline.analyze(load_dicom(source))
    assert not result.analysed and result.projection.projection.value == "frontal"

    (sr,) = build_result_objects(source, result)
    sr.save_as(tmp_path / "SR.dcm", enforce_file_format=True)
    output = run_tool(["dciodvfy", "-new", str(tmp_path / "SR.dcm")])
    assert not [ln for ln in output.splitlines() if ln.startswith("Error")]
    notes = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any(n.startswith("Image not analysed: lateral projection by the shape of the lung mask (the lung "
                            "mask is one field 100% of the image wide") for n in notes), notes
    assert any(n.startswith("Pipeline warning: projection: the lung mask is one field") for n in notes), notes

@pytest.mark.slow
def test_an_img2dcm_secondary_capture_without_modality_gets_valid_results(shared_data: Path,
                                                                          tmp_path: Path) -> None:
    """dcmtk's img2dcm wraps a JPEG as a Secondary Capture with no Modality and an empty patient: the
    way a research group turns a PNG collection into DICOM. Its results must build and validate."""
    from PIL import Image

    from pipelines.chest import ChestPipeline
    from pipelines.image import load_dicom
    from pipelines.testing import write_random_bundles

    png = sorted((shared_data / "ieee8023_covid_cxr" / "images_512").glob("*.png"))[0]
    jpeg, wrapped = tmp_path / "cxr.jpg", tmp_path / "cxr.dcm"
    Image.open(png).convert("L").save(jpeg, quality=90)
    run_tool(["img2dcm", "-i", "JPEG", str(jpeg), str(wrapped)])
    source = pydicom.dcmread(wrapped)
    assert "Modality" not in source and source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"

    models = tmp_path / "models"
    write_random_bundles(models, seed=3, state_dir=tmp_path / "state")
    pipeline = ChestPipeline.from_models_dir(models, device="cpu", state_dir=tmp_path / "state")
    result = pipeline.analyze(load_dicom(source))
    assert result.analysed

    objects = build_result_objects(source, result)
    assert [o.Modality for o in objects] == ["SEG", "SR", "OT"]
    assert "Modality" not in source  # only the writers' reference copy gets one
    for obj in objects:
        path = tmp_path / f"result_{obj.Modality}.dcm"
        obj.save_as(path, enforce_file_format=True)
        output = run_tool(["dciodvfy", "-new", str(path)])
        assert not [ln for ln in output.splitlines() if ln.startswith("Error")], (path.name, output)
        assert obj.StudyInstanceUID == source.StudyInstanceUID
    seg = objects[0]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID \
        == source.SOPInstanceUID
