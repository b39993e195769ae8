"""The patient's age from the DICOM header, for the COVID-19 model's adults-only gate (issue 6).

The covid card says the model is for adults (it calls most children COVID-19); the shipped bundle
names ``min_patient_age_years`` and the pipeline must withhold its output for a younger patient,
keep every other finding, and say why.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset


@pytest.mark.parametrize(("value", "years"), [
    ("045Y", 45.0), ("018M", 1.5), ("052W", 52 * 7 / 365.25), ("010D", 10 / 365.25),
    (" 5Y", 5.0), ("062y", 62.0),
])
def test_age_strings(value: str, years: float) -> None:
    from pipelines.population import parse_age_string

    assert parse_age_string(value) == pytest.approx(years)


@pytest.mark.parametrize("value", ["", "45", "45 Y", "045X", "1234Y", "Y"])
def test_malformed_age_strings_are_no_age(value: str) -> None:
    from pipelines.population import parse_age_string

    assert parse_age_string(value) is None


def test_age_from_the_header() -> None:
    from pipelines.population import below_minimum_age, describe_age, patient_age_years

    ds = Dataset()
    assert patient_age_years(ds) is None and patient_age_years(None) is None
    ds.PatientBirthDate, ds.StudyDate = "20200301", "20250228"
    assert patient_age_years(ds) == pytest.approx(4.99, abs=0.01)
    ds.StudyDate = ""
    ds.AcquisitionDate = "20220901"  # the next date in the header serves when the study's is empty
    assert patient_age_years(ds) == pytest.approx(2.5, abs=0.01)
    ds.PatientAge = "040Y"  # Patient's Age wins over the dates
    assert patient_age_years(ds) == 40.0
    ds.PatientAge = "forty"  # malformed: fall back to the dates
    assert patient_age_years(ds) == pytest.approx(2.5, abs=0.01)
    ds.PatientBirthDate = "20300101"  # born after the examination: no age
    assert patient_age_years(ds) is None
    child = Dataset()
    child.PatientAge = "005Y"
    assert below_minimum_age(child, 18.0) == 5.0
    assert below_minimum_age(child, 0.0) is None and below_minimum_age(child, 5.0) is None
    assert describe_age(5.0) == "5 years" and describe_age(1.5) == "18 months"


def test_negative_minimum_age_is_refused() -> None:
    from pipelines.bundle import BundleMetadata
    from pipelines.errors import BundleError

    with pytest.raises(BundleError, match="min_patient_age_years"):
        BundleMetadata(name="x", version="1", task="covid", architecture="resnet18",
                       network_def={"_target_": "x"}, input={}, labels=["a", "b"], min_patient_age_years=-1)
