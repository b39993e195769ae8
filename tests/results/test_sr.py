"""TID 1500 SR: written, read back by highdicom, values compared with the pipeline result."""

from __future__ import annotations

import dataclasses

import highdicom as hd
import numpy as np
import pytest
from result_sets import ResultSet

from node.results import codes
from node.results.seg import GGO_SEGMENT, LUNG_SEGMENT
from node.results.settings import RESEARCH_USE_NOTE
from node.results.sr import (
    OHIF_BOX_TRACKING_IDENTIFIER,
    TRACKING_COVID,
    TRACKING_GGO_EXTENT,
    TRACKING_LUNG_AREA,
    TRACKING_PROJECTION,
    box_polyline,
)

Group = hd.sr.MeasurementsAndQualitativeEvaluations


def _groups(rs: ResultSet) -> tuple[hd.sr.Comprehensive3DSR, list[Group]]:
    sr = hd.sr.srread(rs.paths["SR"])
    return sr, sr.content.get_image_measurement_groups()


def _by_id(groups, identifier: str):
    return [g for g in groups if g.tracking_identifier == identifier]


def _notes(sr: hd.sr.Comprehensive3DSR) -> list[str]:
    root = sr.ContentSequence
    containers = [i for i in root if i.ValueType == "CONTAINER"
                  and i.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value]
    assert len(containers) == 1
    return [i.TextValue for i in containers[0].ContentSequence if i.ValueType == "TEXT"]


def test_frontal_values_round_trip(frontal_sets: dict[str, ResultSet]) -> None:
    for name, rs in frontal_sets.items():
        result = rs.result
        sr, groups = _groups(rs)
        assert all(g.tracking_uid for g in groups), name
        assert len({g.tracking_uid for g in groups}) == len(groups), name

        (proj,) = _by_id(groups, TRACKING_PROJECTION)
        assert proj.get_qualitative_evaluations()[0].value == codes.FRONTAL
        assert proj.get_measurements()[0].value == pytest.approx(result.projection.probability, abs=1e-6)

        (covid,) = _by_id(groups, TRACKING_COVID)
        assert covid.finding_type == codes.COVID_19
        qual = covid.get_qualitative_evaluations()[0]
        assert qual.value == (codes.PRESENT if result.covid.positive else codes.ABSENT)
        prob = covid.get_measurements(name=codes.PROBABILITY)[0]
        assert prob.value == pytest.approx(result.covid.probability, abs=1e-6)
        threshold = covid.get_measurements(name=codes.THRESHOLD_VALUE)[0]
        assert threshold.value == pytest.approx(result.covid.threshold)

        boxes = _by_id(groups, OHIF_BOX_TRACKING_IDENTIFIER)
        assert len(boxes) == len(result.ggo.boxes), name
        for group, box in zip(boxes, result.ggo.boxes, strict=True):
            assert group.finding_type == codes.GROUND_GLASS_OPACITY
            (num,) = group.get_measurements()
            assert num.name == codes.CERTAINTY_OF_FINDING
            assert num.value == pytest.approx(box.confidence, abs=1e-6)
            (scoord,) = num.referenced_coordinates
            assert scoord.GraphicType == "POLYLINE"
            points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
            np.testing.assert_allclose(points, box_polyline(box), atol=1e-3)
            ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == result.sop_instance_uid

        (extent,) = _by_id(groups, TRACKING_GGO_EXTENT)
        (value,) = extent.get_measurements()
        assert (value.name, value.unit) == (codes.EXTENT, codes.UNIT_PERCENT)
        assert value.value == pytest.approx(result.ggo.extent_percent, abs=1e-6)

        (area,) = _by_id(groups, TRACKING_LUNG_AREA)
        (num,) = area.get_measurements()
        if result.spacing is None:
            assert num.unit == codes.UNIT_PIXELS and num.value == result.lungs.area_px, name
            assert num.method == codes.METHOD_AREA_PIXEL_COUNT
        else:
            assert num.unit == codes.UNIT_MM2, name
            assert num.value == pytest.approx(result.lungs.area_mm2, abs=0.01)
            methods = {"PixelSpacing": codes.METHOD_AREA_PIXEL_SPACING,
                       "ImagerPixelSpacing": codes.METHOD_AREA_IMAGER_PIXEL_SPACING}
            expected = methods[result.spacing.source.value]
            assert num.method == expected, name
        assert _notes(sr)[0] == RESEARCH_USE_NOTE


def test_segment_groups_reference_the_seg(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["orthanctests_Monochrome1-Jpeg_CR"]
    seg = rs.read("SEG")
    sr, groups = _groups(rs)
    segments = {d.SegmentNumber: d.TrackingUID for d in seg.SegmentSequence}
    for identifier, number in ((TRACKING_GGO_EXTENT, GGO_SEGMENT), (TRACKING_LUNG_AREA, LUNG_SEGMENT)):
        (group,) = _by_id(groups, identifier)
        assert group.tracking_uid == segments[number]  # the SR finding tracks the SEG segment
        refs = [i.ReferencedSOPSequence[0] for i in group.source_images]
        seg_refs = [r for r in refs if r.ReferencedSOPInstanceUID == seg.SOPInstanceUID]
        assert [r.ReferencedSegmentNumber for r in seg_refs] == [number]
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == {seg.SOPInstanceUID, rs.result.sop_instance_uid}


def test_every_measurement_group_has_spatial_coordinates(frontal_sets, lateral_sets) -> None:
    """OHIF 3.13 crashes on a measurement group without SCOORD (see node/results/sr.py)."""
    for rs in [frontal_sets["dx_mono2_raw_ps"], lateral_sets["dx_mono2_raw_ps"]]:
        _, groups = _groups(rs)
        for group in groups:
            assert any(m.referenced_coordinates for m in group.get_measurements()), group.tracking_identifier


def test_report_header_observer_procedure_and_library(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["pydicomdata_RG1_J2KI_CR_chest"]
    sr, _ = _groups(rs)
    root = sr.ContentSequence
    by_name = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in root}
    procedure = by_name["Procedure reported"].ConceptCodeSequence[0]
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == ("399208008", "SCT")
    assert by_name["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert by_name["Device Observer Name"].TextValue == "cxr-node chest X-ray AI"
    library = by_name["Image Library"]
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for grp in library.ContentSequence for i in grp.ContentSequence]
    assert refs == [rs.result.sop_instance_uid]
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.LOCAL_SCHEME


def test_lateral_sr_says_not_analysed_and_why(lateral_sets: dict[str, ResultSet]) -> None:
    for name, rs in lateral_sets.items():
        assert set(rs.paths) == {"SR"}, name
        sr, groups = _groups(rs)
        assert [g.tracking_identifier for g in groups] == [TRACKING_PROJECTION]
        assert groups[0].get_qualitative_evaluations()[0].value == codes.LATERAL
        notes = _notes(sr)
        assert notes[0] == RESEARCH_USE_NOTE
        assert notes[1] == f"Image not analysed: {rs.result.not_analysed_reason}."


def test_skipped_stages_are_reported_as_notes(frontal_sets: dict[str, ResultSet], write_set) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    warning = "covid: skipped, lungs-only input needs a lung mask; none found"
    out = write_set("nocovid", rs.source_path, dataclasses.replace(rs.result, covid=None, warnings=[warning]))
    sr, groups = _groups(out)
    assert not _by_id(groups, TRACKING_COVID)
    assert f"Pipeline warning: {warning}" in _notes(sr)


def test_empty_lung_mask_still_gives_valid_objects(frontal_sets: dict[str, ResultSet], write_set) -> None:
    """No lungs found: area 0, no extent (noted), no COVID/GGO stage; every group still has a SCOORD."""
    rs = frontal_sets["cr_mono1_j2k_nospacing"]
    empty = np.zeros(rs.result.image_shape, dtype=bool)
    lungs = dataclasses.replace(rs.result.lungs, mask=empty, area_px=0, area_mm2=None)
    result = dataclasses.replace(rs.result, lungs=lungs, covid=None, ggo=None,
                                 warnings=["covid: skipped, lungs-only input needs a lung mask; none found"])
    out = write_set("nolungs", rs.source_path, result)
    sr, groups = _groups(out)
    assert [g.tracking_identifier for g in groups] == [TRACKING_PROJECTION, TRACKING_LUNG_AREA]
    (area,) = _by_id(groups, TRACKING_LUNG_AREA)[0].get_measurements()
    assert area.value == 0 and area.unit == codes.UNIT_PIXELS
    assert all(m.referenced_coordinates for g in groups for m in g.get_measurements())
    seg = hd.seg.segread(out.paths["SEG"])
    assert [d.SegmentNumber for d in seg.SegmentSequence] == [LUNG_SEGMENT]
    assert out.read("OT").BurnedInAnnotation == "YES"


def test_covid_group_names_the_lung_model_that_cut_its_input(
    frontal_sets: dict[str, ResultSet], write_set
) -> None:
    """A covid bundle with its own lung model: the SR says which, and the probability's region is its mask."""
    from pipelines.results import ModelInfo

    rs = frontal_sets["dx_mono2_raw_ps"]
    own = ModelInfo(name="lungs-unet-v7", version="1.0.0", task="lungs", architecture="unet")
    h, w = rs.result.image_shape
    box = np.zeros((h, w), dtype=bool)
    box[h // 4: h // 2, w // 4: w // 2] = True  # a mask unlike the pipeline's two lung ellipses
    covid = dataclasses.replace(rs.result.covid, input_mask=box, input_lung_model=own)
    out = write_set("ownlungs", rs.source_path, dataclasses.replace(rs.result, covid=covid))
    sr, groups = _groups(out)
    (group,) = _by_id(groups, TRACKING_COVID)
    def texts_of(items) -> list[str]:  # type: ignore[no-untyped-def]
        found = []
        for item in items:
            if item.ValueType == "TEXT":
                found.append(str(item.TextValue))
            found += texts_of(item.get("ContentSequence", []))
        return found

    texts = texts_of(group)
    assert "input_lungs=lungs-unet-v7 1.0.0" in texts
    (scoord,) = group.get_measurements(name=codes.PROBABILITY)[0].referenced_coordinates
    points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
    assert points[:, 0].min() == pytest.approx(w // 4, abs=1)
    assert points[:, 0].max() == pytest.approx(w // 2, abs=1)
    assert points[:, 1].min() == pytest.approx(h // 4, abs=1)
    assert points[:, 1].max() == pytest.approx(h // 2, abs=1)


def test_a_models_reader_caution_is_a_note_beside_its_values(frontal_sets: dict[str, ResultSet],
                                                             write_set) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    assert not [n for n in _notes(_groups(rs)[0]) if n.startswith("Model caution")]  # none without one
    ggo_model = dataclasses.replace(rs.result.ggo.segmentation_model, caution="It over-calls normal lungs.")
    ggo = dataclasses.replace(rs.result.ggo, segmentation_model=ggo_model)
    result = dataclasses.replace(rs.result, ggo=ggo)
    sr, _ = _groups(write_set("caution", rs.source_path, result))
    assert f"Model caution ({ggo_model.name} {ggo_model.version}): It over-calls normal lungs." in _notes(sr)


def test_the_shipped_cautions_load_from_the_bundles() -> None:
    from pathlib import Path

    from pipelines.bundle import read_metadata

    models = Path(__file__).resolve().parents[2] / "models"
    assert "over-calls normal lungs" in read_metadata(models / "ggo_segmentation").info.caution
    assert "near chance" in read_metadata(models / "covid").info.caution
