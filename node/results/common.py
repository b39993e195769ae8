"""What every result object shares: identity of the writer, study copy, dates, character set.

PS3.3 C.7.2 / C.7.1: a derived object belongs to the *same* Patient and Study as its source
(highdicom copies Patient ID/Name/Birth Date/Sex, Study Instance UID, Study Date/Time, Study ID,
Accession Number and Referring Physician from the source dataset), in a *new* Series (C.7.3).
PS3.3 C.12.1.1.5: Contributing Equipment names the software that made the object. PS3.3
C.12.1.1.2: Specific Character Set must cover the copied Patient Name.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import pydicom
from pydicom.uid import UID, generate_uid

from node.results import codes
from node.results.settings import ResultSettings
from pipelines.results import ChestResult

log = logging.getLogger(__name__)

_AGE_STRING = re.compile(r"\d{3}[DWMY]")

# Attributes without which no derived object can say what it belongs to (PS3.3 C.7.2.1, C.12.1).
REQUIRED_SOURCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                              "Rows", "Columns")


class ResultInputError(ValueError):
    """The source dataset or the pipeline result cannot be turned into result objects."""


@dataclass(frozen=True)
class ResultSeries:
    """The result series of one analysis run over a study: one per object type.

    The worker makes one per job, so a study of a PA and a lateral image gets ONE SEG series,
    ONE SR series (two instances, Instance Numbers 1 and 2), ... rather than two series that share
    a Series Number (PS3.3 C.7.3.1: a series groups the instances of one kind made together).
    """

    seg: UID = field(default_factory=generate_uid)
    sr: UID = field(default_factory=generate_uid)
    sc: UID = field(default_factory=generate_uid)
    kos: UID = field(default_factory=generate_uid)


@dataclass(frozen=True)
class ResultContext:
    """Values shared by the objects built from one source image in one call.

    One ``now`` gives every object the same Content/Series Date and Time, so a viewer sorts
    them together and the SR's evidence matches the SEG it references.
    """

    settings: ResultSettings
    now: datetime.datetime
    specific_character_set: str | list[str] | None
    series: ResultSeries = field(default_factory=ResultSeries)
    instance_number: int = 1  # of each object in its series: the source image's place in the job
    seg_instance_uid: UID = field(default_factory=generate_uid)
    sr_instance_uid: UID = field(default_factory=generate_uid)
    sc_instance_uid: UID = field(default_factory=generate_uid)
    kos_instance_uid: UID = field(default_factory=generate_uid)

    @property
    def date_kwargs(self) -> dict[str, Any]:
        """highdicom SOPClass keywords for Content and Series Date/Time (PS3.3 C.7.3.1, C.7.6.1)."""
        return {
            "content_date": self.now.date(),
            "content_time": self.now.time().replace(microsecond=0),
            "series_date": self.now.date(),
            "series_time": self.now.time().replace(microsecond=0),
        }

    def common_kwargs(self) -> dict[str, Any]:
        """Keywords every highdicom constructor of ours accepts."""
        kwargs: dict[str, Any] = dict(self.date_kwargs)
        if self.specific_character_set is not None:
            kwargs["specific_character_set"] = self.specific_character_set
        if self.settings.institution_name:
            kwargs["institution_name"] = self.settings.institution_name
        if self.settings.institutional_department_name:
            kwargs["institutional_department_name"] = self.settings.institutional_department_name
        return kwargs


def make_context(source: pydicom.Dataset, settings: ResultSettings,
                 now: datetime.datetime | None = None, *,
                 series: ResultSeries | None = None, instance_number: int = 1) -> ResultContext:
    if instance_number < 1:
        raise ValueError(f"instance_number must be >= 1, got {instance_number}")
    return ResultContext(
        settings=settings,
        now=now or datetime.datetime.now(),
        specific_character_set=character_set_for(source),
        series=series or ResultSeries(),
        instance_number=instance_number,
    )


def character_set_for(source: pydicom.Dataset) -> str | list[str] | None:
    """The Specific Character Set of the results: the source's, or UTF-8 when it has none.

    Our own text is ASCII, and the only non-ASCII text we copy comes from the source (Patient
    Name, Study Description...), so the source's character set always covers it. A source
    without (0008,0005) but with non-ASCII text is invalid (default repertoire is ASCII,
    PS3.5 6.1.2.2); its text was decoded by pydicom with a fallback, and we re-encode in
    UTF-8 (ISO_IR 192) so that nothing is lost.
    """
    value = source.get("SpecificCharacterSet")
    if value:
        if isinstance(value, str):
            return value
        return [str(v) for v in value]
    for keyword in ("PatientName", "ReferringPhysicianName", "StudyDescription", "StudyID",
                    "AccessionNumber", "PatientID"):
        text = str(source.get(keyword, "") or "")
        if not text.isascii():
            log.warning("source %s has non-ASCII %s but no Specific Character Set; writing ISO_IR 192",
                        source.get("SOPInstanceUID"), keyword)
            return "ISO_IR 192"
    return None


def check_inputs(source: pydicom.Dataset, result: ChestResult) -> None:
    """Refuse a source/result pair that would produce objects pointing at the wrong image."""
    missing = [k for k in REQUIRED_SOURCE_ATTRIBUTES if k not in source or source.get(k) in (None, "")]
    if missing:
        raise ResultInputError(
            f"source {source.get('SOPInstanceUID', '<no SOPInstanceUID>')}: missing {', '.join(missing)}")
    shape = (int(source.Rows), int(source.Columns))
    if tuple(result.image_shape) != shape:
        raise ResultInputError(
            f"source {source.SOPInstanceUID}: result grid {tuple(result.image_shape)} "
            f"!= source Rows x Columns {shape}")
    if result.sop_instance_uid and result.sop_instance_uid != source.SOPInstanceUID:
        raise ResultInputError(
            f"result is for SOP Instance {result.sop_instance_uid}, source is {source.SOPInstanceUID}")
    if not str(source.get("Modality", "") or "").strip():
        log.warning("source %s: no Modality in the header; the results reference it as %s",
                    source.SOPInstanceUID, source_modality(source))
    age = source.get("PatientAge")
    if age and not _AGE_STRING.fullmatch(str(age)):
        log.warning("source %s: invalid Patient Age %r is left out of the results",
                    source.SOPInstanceUID, str(age))
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise ResultInputError(f"source {source.SOPInstanceUID}: multi-frame images are not supported")
    dropped: list[str] = []
    cut: list[str] = []
    for element in source:
        if element.tag == pydicom.tag.Tag("PixelData"):
            continue
        kept = cleaned_element(element)
        if kept is None or kept is not element:
            (dropped if kept is None else cut).append(element.keyword or str(element.tag))
    if dropped or cut:
        # keywords only: the values are patient data and never go into a log, an error or status
        log.warning("source %s: the results leave out unparseable %s and cut over-long %s to their VR's "
                    "maximum length", source.SOPInstanceUID, ", ".join(dropped) or "-", ", ".join(cut) or "-")


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that
# highdicom copies from the source; some real sources (e.g. secondary captures) omit them.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


# Modality (0008,0060, Type 1) for a source without one, from its SOP Class: converters such as dcmtk's
# img2dcm write secondary captures without it, and highdicom reads it from every source it references.
_MODALITY_BY_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",  # Digital X-Ray Image Storage - For Processing
}
MISSING_MODALITY = "OT"  # "Other" (PS3.3 C.7.3.1.1.1): what the SOP Class does not tell


def source_modality(source: pydicom.Dataset) -> str:
    """The source's Modality, or the one its SOP Class implies when the header has none."""
    value = str(source.get("Modality", "") or "").strip()
    return value or _MODALITY_BY_SOP_CLASS.get(str(source.get("SOPClassUID", "")), MISSING_MODALITY)


# Maximum value lengths in characters of the string VRs a derived object copies (PS3.5 Table 6.2-1;
# PN: per component group). Numbers (DS, IS) and UIDs are never cut: a cut number is another number.
VR_MAX_CHARS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}
_TEMPORAL = {"DA": pydicom.valuerep.DA, "TM": pydicom.valuerep.TM, "DT": pydicom.valuerep.DT}


def _cut(vr: str, value: object) -> object:
    """``value`` with every string (each value of a multi-value, each PN component group) cut to the
    VR's maximum length."""
    limit = VR_MAX_CHARS[vr]
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [_cut(vr, v) for v in value]
    if value is None:
        return None
    text = str(value)
    if vr == "PN":
        return "=".join(group[:limit] for group in text.split("="))
    return text[:limit]


def _temporal_ok(vr: str, value: object) -> bool:
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    for v in values:
        if v in (None, ""):
            continue
        try:
            parsed = _TEMPORAL[vr](str(v)) if isinstance(v, str) else v
        except (ValueError, TypeError, OverflowError):
            return False
        if parsed is None:
            return False
    return True


def cleaned_element(element: pydicom.DataElement) -> pydicom.DataElement | None:
    """A top-level element as a derived object may copy it: None for a date/time that does not parse
    (PS3.5 6.2: DA YYYYMMDD, TM HHMMSS.FFFFFF, DT), a new element when a string is longer than its
    VR allows, the element itself otherwise. The stored source is never changed (issue: a source with
    PatientBirthDate "1901-01-01" or a 60,000-character Patient Name still gets valid results)."""
    vr = str(element.VR)
    if vr in _TEMPORAL and not element.is_empty and not _temporal_ok(vr, element.value):
        return None
    if vr in VR_MAX_CHARS and not element.is_empty:
        value = _cut(vr, element.value)
        if value != (element.value if not isinstance(element.value, pydicom.multival.MultiValue)
                     else list(element.value)):
            return pydicom.DataElement(element.tag, vr, value)
    return element


def reference_copy(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source without its Pixel Data, with absent Type 2 patient/study attributes present empty.

    highdicom reads these attributes unconditionally; an absent Type 2 attribute and an empty
    one mean the same (PS3.5 7.4.2), so the results stay consistent with the source. A missing
    Modality gets :func:`source_modality` in the copy only (the stored source is not changed).
    Values are cleaned first (:func:`cleaned_element`): a date that does not parse is left out
    (empty when the attribute is Type 2), a string is cut to its VR's maximum length.
    """
    copy = pydicom.Dataset()
    for element in source:
        if element.tag == pydicom.tag.Tag("PixelData"):
            continue
        kept = cleaned_element(element)
        if kept is not None:
            copy.add(kept)
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    for keyword in _TYPE2_COPIED:
        if keyword not in copy:
            setattr(copy, keyword, None)
    if not str(copy.get("Modality", "") or "").strip():
        copy.Modality = source_modality(source)
    age = copy.get("PatientAge")
    if age and not _AGE_STRING.fullmatch(str(age)):
        # Patient Age is Type 3 in the Patient Study module (PS3.3 C.7.2.2) and an AS value must
        # be "nnnD|W|M|Y" (PS3.5 6.2); copying an invalid one would make every result invalid.
        # check_inputs() logs it once per source.
        del copy.PatientAge
    return copy


# Patient/Study attributes that some highdicom constructors copy and others do not (Patient
# Module C.7.1.1, General Study C.7.2.1, Patient Study C.7.2.2): copied to every object so that
# the set stays consistent for dcentvfy and for a PACS that checks study-level attributes.
_STUDY_LEVEL = ("IssuerOfPatientID", "StudyDescription", "PatientAge", "PatientSize", "PatientWeight",
                "EthnicGroup", "PatientComments", "AdditionalPatientHistory")


def copy_study_attributes(target: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Copy the attributes of ``_STUDY_LEVEL`` that the source has (empty ones too) and the target lacks."""
    reference = reference_copy(source)
    for keyword in _STUDY_LEVEL:
        if keyword in reference and keyword not in target:
            setattr(target, keyword, reference[keyword].value)


def contributing_equipment(ctx: ResultContext, result: ChestResult | None) -> list[hd.ContributingEquipment]:
    """Contributing Equipment item naming this node as the processing software (PS3.3 C.12.1.1.5).

    ``result`` None: an image the node could not analyse, so no model contributed anything.
    """
    models = ("none, image not analysed" if result is None
              else ", ".join(f"{m.name} {m.version}" for m in result.models.values()))
    return [
        hd.ContributingEquipment(
            manufacturer=ctx.settings.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=ctx.settings.model_name,
            software_versions=ctx.settings.software_version,
            device_serial_number=ctx.settings.device_serial_number,
            institution_name=ctx.settings.institution_name,
            contribution_datetime=ctx.now.replace(microsecond=0),
            contribution_description=f"Processing Algorithm: {models}"[:64],
        )
    ]


def spacing_tuple(result: ChestResult) -> tuple[float, float] | None:
    """(row, column) spacing in mm as the pipeline found it, or None."""
    if result.spacing is None:
        return None
    return float(result.spacing.row_mm), float(result.spacing.column_mm)


def patient_orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation (0020,0020) when it has two non-empty values."""
    value = source.get("PatientOrientation")
    if value is None:
        return None
    values = [str(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                                else [value])]
    if len(values) == 2 and all(values):
        return values[0], values[1]
    return None


@contextlib.contextmanager
def source_person_names_as_they_are() -> Iterator[None]:
    """highdicom warns about single-component Patient Names copied from the source ("Covid0000");
    they are the source's data and are copied as they are (PS3.3 C.7.1.1): no warning per object."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*",
                                category=UserWarning)
        yield
