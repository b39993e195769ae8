"""What all objects share: patient/study copy, series, equipment, dates, character sets, bad input."""

from __future__ import annotations

import dataclasses

import pydicom
import pytest
from factories import SPECS, make_result, make_source
from result_sets import FIXED_NOW, ResultSet

from node.results import ResultInputError, ResultSettings, build_result_objects
from node.results import settings as result_settings
from pipelines.results import Projection

PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                 "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
SERIES = {"SEG": (result_settings.SEG_SERIES_NUMBER, result_settings.SEG_SERIES_DESCRIPTION),
          "SR": (result_settings.SR_SERIES_NUMBER, result_settings.SR_SERIES_DESCRIPTION),
          "OT": (result_settings.SC_SERIES_NUMBER, result_settings.SC_SERIES_DESCRIPTION)}


def _all(frontal_sets, lateral_sets):
    for sets in (frontal_sets, lateral_sets):
        for name, rs in sets.items():
            for modality in rs.paths:
                yield name, rs, modality, rs.read(modality)


def test_same_patient_and_study_new_fixed_series(frontal_sets, lateral_sets) -> None:
    series_by_set: dict[str, list[str]] = {}
    for name, rs, modality, obj in _all(frontal_sets, lateral_sets):
        source = rs.source()
        for keyword in PATIENT_STUDY:
            expected = str(source.get(keyword, "") or "")
            assert str(obj.get(keyword, "") or "") == expected, (name, modality, keyword)
        assert obj.SeriesInstanceUID != source.SeriesInstanceUID
        assert (obj.SeriesNumber, obj.SeriesDescription) == SERIES[modality], (name, modality)
        series_by_set.setdefault(rs.name, []).append(obj.SeriesInstanceUID)
        assert obj.ContentDate == FIXED_NOW.strftime("%Y%m%d")
        assert obj.ContentTime == FIXED_NOW.strftime("%H%M%S")
        assert obj.SeriesDate == obj.ContentDate and obj.SeriesTime == obj.ContentTime
    for name, uids in series_by_set.items():
        assert len(set(uids)) == len(uids), name  # SEG, SR and SC each in its own new series


def test_contributing_equipment_names_the_node(frontal_sets, lateral_sets) -> None:
    for name, _rs, modality, obj in _all(frontal_sets, lateral_sets):
        # highdicom adds the source's Acquisition Equipment and itself; ours is one item among them.
        (item,) = [i for i in obj.ContributingEquipmentSequence if i.get("Manufacturer") == "cxr-node"]
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM"), (name, modality)
        assert item.Manufacturer == "cxr-node"
        assert item.ManufacturerModelName == result_settings.MODEL_NAME
        assert item.SoftwareVersions == result_settings.software_version()
        assert item.ContributionDateTime == FIXED_NOW.strftime("%Y%m%d%H%M%S")
        assert obj.Manufacturer == "cxr-node"


@pytest.mark.parametrize("spec_name", ["cr_mono1_j2k_nospacing", "cr_mono2_raw_ips_utf8"])
def test_non_ascii_patient_names_survive(frontal_sets, lateral_sets, spec_name: str) -> None:
    """ISO_IR 100 "Müller^Jürgen" and ISO_IR 192 Japanese are written and read back unchanged."""
    spec = next(s for s in SPECS if s.name == spec_name)
    for sets in (frontal_sets, lateral_sets):
        rs = sets[spec_name]
        for modality, path in rs.paths.items():
            raw = pydicom.dcmread(path)
            assert raw.SpecificCharacterSet == spec.charset, modality
            assert str(raw.PatientName) == spec.patient_name, modality


def test_source_without_character_set_but_non_ascii_gets_utf8(tmp_path) -> None:
    source = make_source(SPECS[0])
    source.PatientName = "Ødegård^Åse"  # invalid without (0008,0005): default repertoire is ASCII
    objects = build_result_objects(source, make_result(source))
    for obj in objects:
        path = tmp_path / f"{obj.Modality}.dcm"
        obj.save_as(path)
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert str(back.PatientName) == "Ødegård^Åse"


def test_object_list_and_order(frontal_sets: dict[str, ResultSet],
                               lateral_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    objects = build_result_objects(rs.source(), rs.result)
    assert [o.Modality for o in objects] == ["SEG", "SR", "OT"]
    lat = lateral_sets["dx_mono2_raw_ps"]
    assert [o.Modality for o in build_result_objects(lat.source(), lat.result)] == ["SR"]


def test_bad_inputs_are_refused_with_specific_errors(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    source = rs.source()
    with pytest.raises(ResultInputError, match="result is for SOP Instance"):
        build_result_objects(source, dataclasses.replace(rs.result, sop_instance_uid="1.2.3"))
    with pytest.raises(ResultInputError, match="result grid"):
        build_result_objects(source, dataclasses.replace(rs.result, image_shape=(10, 10)))
    del source.StudyInstanceUID
    with pytest.raises(ResultInputError, match="missing StudyInstanceUID"):
        build_result_objects(source, rs.result)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="distinct"):
        ResultSettings(seg_series_number=5, sr_series_number=5)
    with pytest.raises(ValueError, match="sc_max_side"):
        ResultSettings(sc_max_side=10)
    assert ResultSettings(institution_name="Klinik Süd").institution_name == "Klinik Süd"


def test_a_studys_results_share_one_series_per_object_type() -> None:
    """The worker passes one ResultSeries per job: a PA + lateral study gets ONE SR series, numbered 1, 2."""
    from node.results import ResultSeries

    frontal = make_source(SPECS[0], seed=0)
    lateral = make_source(SPECS[0], seed=1)
    lateral.StudyInstanceUID = frontal.StudyInstanceUID
    series = ResultSeries()
    first = build_result_objects(frontal, make_result(frontal), series=series, instance_number=1)
    second = build_result_objects(lateral, make_result(lateral, projection=Projection.LATERAL),
                                  series=series, instance_number=2)
    by_kind = {o.Modality: o for o in first}
    assert by_kind["SEG"].SeriesInstanceUID == series.seg and by_kind["OT"].SeriesInstanceUID == series.sc
    (lateral_sr,) = second
    assert by_kind["SR"].SeriesInstanceUID == lateral_sr.SeriesInstanceUID == series.sr
    assert by_kind["SR"].SeriesNumber == lateral_sr.SeriesNumber
    assert [by_kind["SR"].InstanceNumber, lateral_sr.InstanceNumber] == [1, 2]
    assert by_kind["SR"].SOPInstanceUID != lateral_sr.SOPInstanceUID
    # without a ResultSeries each call opens new series (offline `cxr-node analyze`)
    again = build_result_objects(frontal, make_result(frontal))
    assert {o.SeriesInstanceUID for o in again}.isdisjoint({o.SeriesInstanceUID for o in first})
    with pytest.raises(ValueError, match="instance_number"):
        build_result_objects(frontal, make_result(frontal), instance_number=0)
