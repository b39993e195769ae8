"""What the stored result objects say, read back for the dashboard: SR findings, SC thumbnails.

The node keeps no copy of the findings beside its result objects: the TID 1500 SR that went to
the PACS is the record (PS3.16 TID 1500/1501), so the study page reads that same SR, matching
content items by their coded concept names (``node.results.codes``), never by display text.
Only coded values, numbers and the SR's notes are read: no patient attribute leaves this module.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from highdicom.sr.coding import CodedConcept
from PIL import Image
from pydicom.dataset import Dataset

from node.results import codes
from node.results.settings import RESEARCH_USE_NOTE

SR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
})
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")
ALGORITHM_NAME = ("111001", "DCM")
ALGORITHM_VERSION = ("111003", "DCM")
FINDING = ("121071", "DCM")


class FindingsError(ValueError):
    """A stored result object could not be read (the message names the file)."""


def _key(concept: CodedConcept) -> tuple[str, str]:
    return (str(concept.value), str(concept.scheme_designator))


IMAGE_VIEW, COVID, PROBABILITY = _key(codes.IMAGE_VIEW), _key(codes.COVID_19), _key(codes.PROBABILITY)
THRESHOLD, CERTAINTY = _key(codes.THRESHOLD_VALUE), _key(codes.CERTAINTY_OF_FINDING)
EXTENT, AREA, LUNG = _key(codes.EXTENT), _key(codes.AREA), _key(codes.LUNG)
GGO = _key(codes.GROUND_GLASS_OPACITY)
COMMENT, PRESENT = _key(codes.COMMENT), _key(codes.PRESENT)


@dataclass
class ImageFindings:
    """One source image's results as its SR states them (None: the SR does not say)."""

    source_uid: str
    sr_uid: str
    projection: str | None = None
    projection_probability: float | None = None
    covid_present: bool | None = None
    covid_probability: float | None = None
    covid_threshold: float | None = None
    ggo_present: bool | None = None  # the image-level GGO decision, when the SR carries one
    ggo_score: float | None = None  # that decision's score and threshold
    ggo_threshold: float | None = None
    ggo_boxes: int = 0
    ggo_max_certainty: float | None = None
    ggo_extent_percent: float | None = None
    lung_area: str | None = None  # value with its unit
    models: list[str] = field(default_factory=list)  # "name version"
    cautions: list[str] = field(default_factory=list)  # "Model caution (...)" notes
    notes: list[str] = field(default_factory=list)  # not analysed, pipeline warnings
    heatmap_uid: str | None = None  # the secondary capture of this image

    @property
    def analysed(self) -> bool:
        return self.covid_probability is not None or self.ggo_extent_percent is not None or self.ggo_boxes > 0


def _items(ds: Dataset) -> Iterable[Dataset]:
    return ds.get("ContentSequence", []) or []


def _name(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return ("", "")
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator))


def _walk(ds: Dataset) -> Iterator[Dataset]:
    for item in _items(ds):
        yield item
        yield from _walk(item)


def _num(item: Dataset) -> tuple[float, str] | None:
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return None
    unit = measured[0].get("MeasurementUnitsCodeSequence")
    return float(measured[0].NumericValue), str(unit[0].CodeValue) if unit else ""


def _code(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptCodeSequence")
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else ("", "")


def _source_uid(sr: Dataset) -> str:
    """The analysed image: the evidence that is not a SEG (PS3.3 C.17.2.3)."""
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.get("ReferencedSeriesSequence", []) or []:
            for ref in series.get("ReferencedSOPSequence", []) or []:
                if str(ref.ReferencedSOPClassUID) != SEGMENTATION:
                    return str(ref.ReferencedSOPInstanceUID)
    return ""


def findings_from_sr(sr: Dataset) -> ImageFindings:
    """Read one TID 1500 report of the node's result writer (node.results.sr)."""
    found = ImageFindings(source_uid=_source_uid(sr), sr_uid=str(sr.SOPInstanceUID))
    for group in _walk(sr):
        if str(group.get("ValueType", "")) != "CONTAINER" or _name(group) != MEASUREMENT_GROUP:
            continue
        _read_group(group, found)
    for item in _walk(sr):
        if str(item.get("ValueType", "")) == "TEXT" and _name(item) == COMMENT:
            text = str(item.TextValue)
            if text == RESEARCH_USE_NOTE:
                continue
            (found.cautions if text.startswith("Model caution") else found.notes).append(text)
    return found


def _read_group(group: Dataset, found: ImageFindings) -> None:
    finding, name, version = ("", ""), "", ""
    codes_: dict[tuple[str, str], tuple[str, str]] = {}
    nums: dict[tuple[str, str], tuple[float, str]] = {}
    for item in _items(group):
        kind, concept = str(item.get("ValueType", "")), _name(item)
        if kind == "CODE" and concept == FINDING:
            finding = _code(item)
        elif kind == "CODE":
            codes_[concept] = _code(item)
        elif kind == "NUM" and (value := _num(item)) is not None:
            nums[concept] = value
        elif kind == "TEXT" and concept == ALGORITHM_NAME:
            name = str(item.TextValue)
        elif kind == "TEXT" and concept == ALGORITHM_VERSION:
            version = str(item.TextValue)
    if name and f"{name} {version}".strip() not in found.models:
        found.models.append(f"{name} {version}".strip())
    if IMAGE_VIEW in codes_:
        found.projection = "frontal" if codes_[IMAGE_VIEW] == _key(codes.FRONTAL) else "lateral"
        found.projection_probability = nums.get(PROBABILITY, (None, ""))[0]
    if COVID in codes_ or finding == COVID:
        if COVID in codes_:
            found.covid_present = codes_[COVID] == PRESENT
        found.covid_probability = nums.get(PROBABILITY, (None, ""))[0]
        found.covid_threshold = nums.get(THRESHOLD, (None, ""))[0]
    if finding == GGO or GGO in codes_:
        if GGO in codes_ or THRESHOLD in nums:  # the image-level GGO decision (pipelines ggo_decision)
            if GGO in codes_:
                found.ggo_present = codes_[GGO] == PRESENT
            found.ggo_score = nums.get(CERTAINTY, (None, ""))[0]
            found.ggo_threshold = nums.get(THRESHOLD, (None, ""))[0]
        elif CERTAINTY in nums:  # one detector box
            found.ggo_boxes += 1
            certainty = nums[CERTAINTY][0]
            found.ggo_max_certainty = max(certainty, found.ggo_max_certainty or 0.0)
        if EXTENT in nums:
            found.ggo_extent_percent = nums[EXTENT][0]
            found.ggo_present = True if found.ggo_present is None else found.ggo_present
    if finding == LUNG and AREA in nums:
        area, unit = nums[AREA]
        found.lung_area = f"{area:,.0f} {'mm²' if unit == 'mm2' else 'px'}"


def read_findings(path: Path) -> ImageFindings:
    try:
        sr = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise FindingsError(f"cannot read the SR {path}: {exc}") from exc
    return findings_from_sr(sr)


def heatmap_source_uid(path: Path) -> str:
    """The image a secondary capture was drawn on (its Source Image Sequence, PS3.3 C.7.6.1.1.4)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise FindingsError(f"cannot read the secondary capture {path}: {exc}") from exc
    seq = ds.get("SourceImageSequence") or []
    return str(seq[0].ReferencedSOPInstanceUID) if seq else ""


def thumbnail_png(path: Path, max_side: int = 512) -> bytes:
    """A PNG (Pillow) of a stored secondary capture, at most ``max_side`` pixels on its longer side."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise FindingsError(f"cannot decode {path}: {exc.__class__.__name__}: {exc}") from exc
    if pixels.ndim == 2:  # a monochrome capture: window to its range
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            pixels = 255 - pixels
    image = Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8)))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
