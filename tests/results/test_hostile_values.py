"""Values the writers must not copy as they are (issue 18): unparseable dates are left out, strings
longer than their VR allows are cut, and the results stay valid (dciodvfy, pydicom, highdicom)."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from factories import SPECS, make_result, make_source
from result_sets import run_tool, write_result_set

LONG = 60_000
LIMITS = {"PatientName": 64, "PatientID": 64, "AccessionNumber": 16, "StudyDescription": 64,
          "ReferringPhysicianName": 64, "InstitutionName": 64}


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lstrip().lower().startswith("error")]


@pytest.fixture(scope="module")
def hostile_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = make_source(SPECS[0])
    ds.PatientBirthDate = "1901-01-01"  # not DA (YYYYMMDD)
    ds.StudyDate = "garbage"
    ds.SeriesDate = "20261399"  # month 13
    ds.StudyTime = "99:99"
    ds.PatientName = "N" * LONG
    ds.PatientID = "I" * LONG
    ds.AccessionNumber = "A" * LONG
    ds.StudyDescription = "D" * LONG
    ds.ReferringPhysicianName = "R" * LONG
    ds.InstitutionName = "H" * LONG
    path = tmp_path_factory.mktemp("hostile") / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_unparseable_dates_and_overlong_strings_give_valid_results(
        hostile_source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = pydicom.dcmread(hostile_source)
    with caplog.at_level(logging.DEBUG):
        rs = write_result_set(tmp_path, "hostile", source, hostile_source, make_result(source))
    assert set(rs.paths) == {"SEG", "SR", "OT"}
    for modality, path in rs.paths.items():
        assert not _errors(run_tool(["dciodvfy", "-new", str(path)])), modality
        ds = pydicom.dcmread(path)
        ds.convert_pixel_data() if "PixelData" in ds else None
        for keyword, limit in LIMITS.items():
            value = ds.get(keyword)
            if value is not None:
                assert 0 < len(str(value)) <= limit, (modality, keyword, len(str(value)))
        assert str(ds.PatientName) == "N" * 64 and str(ds.PatientID) == "I" * 64, modality
        assert str(ds.AccessionNumber) == "A" * 16, modality
        assert ds.get("PatientBirthDate", "") == "", modality  # Type 2: present, empty
        assert ds.get("StudyDate", "") == "" and ds.get("StudyTime", "") == "", modality
        assert ds.StudyInstanceUID == source.StudyInstanceUID
    # the log names what was left out or cut, never the values
    text = caplog.text
    assert "PatientBirthDate" in text and "PatientName" in text
    assert "1901-01-01" not in text and "NNNNNNNN" not in text and "IIIIIIII" not in text


def test_a_source_with_valid_values_is_copied_as_it_is(tmp_path: Path) -> None:
    ds = make_source(SPECS[0])
    path = tmp_path / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    source = pydicom.dcmread(path)
    rs = write_result_set(tmp_path, "plain", source, path, make_result(source))
    for modality in rs.paths:
        out = rs.read(modality)
        assert (out.PatientName, out.PatientID, out.PatientBirthDate, out.StudyDate, out.AccessionNumber) == (
            source.PatientName, source.PatientID, source.PatientBirthDate, source.StudyDate,
            source.AccessionNumber), modality
