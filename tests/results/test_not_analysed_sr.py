"""The "not analysed" report of an image the worker failed on (node.results.sr.not_analysed_report).

Built from the header of each real sample (read without Pixel Data, as the worker reads a failed image)
and from a header that lacks Rows/Columns: a TID 1500 document without measurements that dciodvfy and
pixelmed accept, that highdicom reads back, that belongs to the source's patient and study, cites the
source as evidence and says why it was not analysed.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from result_sets import FIXED_NOW, PIXELMED, run_tool

from node.results import ResultSeries, ResultSettings
from node.results.common import ResultInputError
from node.results.sr import not_analysed_report

TEXT = "Image not analysed by the AI: its pixel data could not be decoded (ValueError: bad stream)."
SAMPLES = ["pydicomdata_RG1_J2KI_CR_chest.dcm", "orthanctests_Monochrome1-Jpeg_CR.dcm",
           "nhsx_nih_cxr_dx_sc.dcm", "txv_siim_ptx_CR_chest_PA.dcm"]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PIXELMED_ACCEPTED = 'Code (399208008,SCT,"Plain chest X-ray") not found in context group 100'


def _texts(ds: pydicom.Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found += _texts(item)
    return found


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lstrip().lower().startswith("error")]


@pytest.fixture(scope="module")
def reports(dicom_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (source, written report) for each sample and for a header without Rows/Columns."""
    out = tmp_path_factory.mktemp("not_analysed")
    series = ResultSeries()
    made = {}
    for number, name in enumerate(SAMPLES, start=1):
        source = dicom_samples / name
        header = pydicom.dcmread(source, stop_before_pixels=True)
        if name.startswith("txv"):
            del header.Rows, header.Columns  # a header cut short before Image Pixel
        report = not_analysed_report(header, TEXT, settings=ResultSettings(), series=series,
                                     instance_number=number, now=FIXED_NOW)
        path = out / f"{Path(name).stem}_not_analysed.dcm"
        report.save_as(path, enforce_file_format=True)
        made[name] = (source, path)
    return made


def test_the_report_cites_its_image_and_says_why(reports: dict[str, tuple[Path, Path]]) -> None:
    for number, name in enumerate(SAMPLES, start=1):
        source_path, path = reports[name]
        source, ds = pydicom.dcmread(source_path, stop_before_pixels=True), pydicom.dcmread(path)
        assert ds.SOPClassUID == COMPREHENSIVE_3D_SR
        assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        assert ds.SeriesNumber == 9102 and ds.InstanceNumber == number
        [evidence] = ds.CurrentRequestedProcedureEvidenceSequence
        [image] = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert _texts(ds)[-1] == TEXT and _texts(ds)[-2].startswith("Research use only")
        concepts = [item.ConceptNameCodeSequence[0].CodeValue for item in ds.ContentSequence]
        assert "126010" not in concepts  # no Imaging Measurements: nothing was measured
        assert ("111028" in concepts) == (not name.startswith("txv"))  # Image Library when Rows/Columns known
        report = hd.sr.srread(path)
        assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        assert "Processing Algorithm: none, image not analysed" in [
            str(e.get("ContributionDescription", "")) for e in report.ContributingEquipmentSequence]


@pytest.mark.slow  # dciodvfy and the pixelmed (Java) validators on every report: ~20 s
def test_validators_accept_the_report(reports: dict[str, tuple[Path, Path]]) -> None:
    failures = {name: _errors(run_tool(["dciodvfy", "-new", str(path)]))
                for name, (_s, path) in reports.items()}
    assert not any(failures.values()), failures
    # pixelmed (one JVM, ~10 s): the SC source whose Modality CID 29 lacks and the header without Rows
    for name in ("nhsx_nih_cxr_dx_sc.dcm", "txv_siim_ptx_CR_chest_PA.dcm"):
        output = run_tool([*PIXELMED, str(reports[name][1])], timeout=300)
        assert "Found Root Template TID_1500 (MeasurementReport)" in output, output[-2000:]
        assert [e for e in _errors(output) if PIXELMED_ACCEPTED not in e] == [], output[-2000:]


def test_a_header_without_its_uids_gets_no_report(dicom_samples: Path) -> None:
    header = pydicom.dcmread(dicom_samples / SAMPLES[0], stop_before_pixels=True)
    del header.StudyInstanceUID
    with pytest.raises(ResultInputError, match="missing StudyInstanceUID"):
        not_analysed_report(header, TEXT)
