"""The patient's age from a DICOM header, for a model's intended population.

Why: the COVID-19 model was trained on adults only and calls most children COVID-19 (its card:
152 of 160 unseen pediatric images). A bundle that names ``min_patient_age_years`` therefore gets no
output for a younger patient; the pipeline says why instead. The age comes from the header, never
from the pixels: Patient's Age (0010,1010, VR AS: ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``), else
Patient's Birth Date (0010,0030) against the Study, Series, Acquisition or Content Date. An image
without either (PNG/JPEG input, anonymised headers) has no known age and is analysed as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}
_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def parse_age_string(value: str) -> float | None:
    """An AS value (``"045Y"``, ``"018M"``, ``"003W"``, ``"010D"``) in years; None when malformed."""
    match = _AGE.match(value.strip().upper())
    if match is None:
        return None
    return int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)] / 365.25


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def patient_age_years(ds: Dataset | None) -> float | None:
    """The patient's age at the examination in years, or None when the header does not say."""
    if ds is None:
        return None
    raw = ds.get("PatientAge")
    if raw:
        age = parse_age_string(str(raw))
        if age is not None:
            return age
        log.warning("ignoring malformed Patient's Age %r (VR AS is nnnD, nnnW, nnnM or nnnY)", str(raw))
    birth = _date(ds.get("PatientBirthDate"))
    if birth is None:
        return None
    for keyword in _DATE_KEYWORDS:
        when = _date(ds.get(keyword))
        if when is not None and when >= birth:
            return (when - birth).days / 365.25
    return None


def below_minimum_age(ds: Dataset | None, minimum_years: float | None) -> float | None:
    """The patient's age when it is known and below ``minimum_years``; else None (analyse the image)."""
    if not minimum_years:
        return None
    age = patient_age_years(ds)
    return age if age is not None and age < minimum_years else None


def describe_age(years: float) -> str:
    """An age as a reader would say it: months under two years, else whole years."""
    if years < 2.0:
        return f"{years * 12.0:.0f} months"
    return f"{int(years)} years"
