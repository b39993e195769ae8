"""Comprehensive 3D SR with a TID 1500 "Imaging Measurement Report" of one chest radiograph.

Content tree (PS3.16 TID 1500; codes in ``node.results.codes``):

* Procedure Reported: the plain chest X-ray (the imaged procedure, not the algorithm);
* Observation Context (TID 1001/1004): a *device* observer naming this node and its version;
* Image Library (TID 1600): the source image;
* Imaging Measurements, one Measurement Group each, every group with a Tracking Identifier and
  a Tracking Unique Identifier (TID 4108):
  - projection (TID 1501): Image View frontal/lateral + its probability;
  - COVID-19 (TID 1501): qualitative Present/Absent + Probability + the operating Threshold;
  - one group per GGO box (TID 1501): Certainty of Finding with the box as a closed SCOORD
    POLYLINE *nested under the NUM* (INFERRED FROM, TID 300 / TID 320) and the Tracking
    Identifier ``Cornerstone3DTools@^0.1.0:PlanarFreehandROI``: this is what OHIF 3.13 needs
    to turn the box into a tracked, editable measurement (STACK.md);
  - GGO extent in % of the lung area (TID 1501), with the SEG's GGO segment as Source of
    Measurement and the GGO outlines as the NUM's SCOORDs;
  - lung area (TID 1501), sourced from the SEG's lung segment, with the lung outlines, in mm2 only
    when the image has a spacing; its Measurement Method names the spacing attribute (local code).
  Every NUM that OHIF may list is INFERRED FROM at least one SCOORD (see ``_regions``).
* Qualitative Evaluations (TID 1500 rows 12-14): a TEXT note that the result is for research use,
  and for a lateral image why it was not analysed.
"""

from __future__ import annotations

import datetime

import highdicom as hd
import numpy as np
import pydicom
import pydicom.sr.codedict
import pydicom.sr.coding
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.uid import generate_uid

from node.results import codes
from node.results.common import (
    ResultContext,
    ResultInputError,
    ResultSeries,
    contributing_equipment,
    copy_study_attributes,
    make_context,
    patient_orientation,
    reference_copy,
    source_person_names_as_they_are,
)
from node.results.geometry import image_outline, mask_outlines
from node.results.seg import GGO_SEGMENT, LUNG_SEGMENT
from node.results.settings import RESEARCH_USE_NOTE, ResultSettings
from pipelines.results import (
    Box,
    ChestResult,
    CovidResult,
    GgoResult,
    LungResult,
    ModelInfo,
    Projection,
    SpacingSource,
)

# OHIF (cornerstone adapters) hydrates a measurement group only when its Tracking Identifier
# names one of its tools as "<adapter version>:<tool>".
OHIF_BOX_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
TRACKING_PROJECTION = "CXR projection"
TRACKING_COVID = "COVID-19 classification"
TRACKING_GGO_EXTENT = "GGO extent"
TRACKING_GGO_DECISION = "GGO decision"
TRACKING_LUNG_AREA = "Lung area"

_AREA_METHOD = {
    SpacingSource.PIXEL_SPACING: codes.METHOD_AREA_PIXEL_SPACING,
    SpacingSource.IMAGER_PIXEL_SPACING: codes.METHOD_AREA_IMAGER_PIXEL_SPACING,
    SpacingSource.IMAGER_PIXEL_SPACING_CORRECTED: codes.METHOD_AREA_IMAGER_PIXEL_SPACING_CORRECTED,
}

_Group = hd.sr.MeasurementsAndQualitativeEvaluations

# DS holds 16 characters (PS3.5 6.2): 6 decimals keep a probability exact to 1e-6.
_DECIMALS = 6


def _num(value: float) -> float:
    return round(float(value), _DECIMALS)


def _algorithm(model: ModelInfo, parameters: list[str] | None = None) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64],
                                          parameters=parameters)


def box_polyline(box: Box) -> np.ndarray:
    """The box as a closed POLYLINE in image coordinates (PS3.3 C.18.6.1.2).

    SCOORD pixel coordinates put (0,0) at the top-left *corner* of the top-left pixel, and the
    pipeline's boxes are edges with exclusive x1/y1, so the corners are used as they are.
    """
    return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1],
                     [box.x0, box.y0]], dtype=np.float32)


def _projection_group(result: ChestResult, src_ref: pydicom.Dataset) -> _Group:
    proj = result.projection
    view = codes.FRONTAL if proj.projection is Projection.FRONTAL else codes.LATERAL
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_PROJECTION),
        algorithm_id=_algorithm(proj.model),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.IMAGE_VIEW, value=view)],
        measurements=[hd.sr.Measurement(
            name=codes.PROBABILITY, value=_num(proj.probability), unit=codes.UNIT_NONE,
            referenced_coordinates=_regions([image_outline(*result.image_shape)], src_ref))],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src_ref)],
    )


def _covid_group(covid: CovidResult, result: ChestResult, src_ref: pydicom.Dataset,
                 lung_outlines: list[np.ndarray] | None = None) -> _Group:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_COVID),
        finding_type=codes.COVID_19,
        algorithm_id=_algorithm(covid.model, _covid_parameters(covid)),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=codes.COVID_19, value=codes.PRESENT if covid.positive else codes.ABSENT)],
        measurements=[
            hd.sr.Measurement(name=codes.PROBABILITY, value=_num(covid.probability), unit=codes.UNIT_NONE,
                              referenced_coordinates=_regions(_covid_input_region(result, lung_outlines),
                                                              src_ref)),
            hd.sr.Measurement(name=codes.THRESHOLD_VALUE, value=_num(covid.threshold), unit=codes.UNIT_NONE),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src_ref)],
    )


def _ggo_decision_group(ggo: GgoResult, lung_outlines: list[np.ndarray], src_ref: pydicom.Dataset) -> _Group:
    """The image-level GGO decision (``pipelines.tasks.ggo_decision``): GGO Present / Absent, its score as
    Certainty of Finding and the threshold as NUMs, over the lungs. Absent: no GGO box, extent or segment
    is written, so this group is how the SR says "GGO not detected" and with what score."""
    decision = ggo.decision
    if decision is None:
        raise ResultInputError("a GGO decision group needs the pipeline's GGO decision")
    parameters = [f"decision={decision.method}"[:64],
                  f"detector={ggo.detection_model.name} {ggo.detection_model.version}"[:64]]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_GGO_DECISION),
        finding_type=codes.GROUND_GLASS_OPACITY,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
        algorithm_id=_algorithm(ggo.segmentation_model, parameters),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=codes.GROUND_GLASS_OPACITY, value=codes.PRESENT if decision.present else codes.ABSENT)],
        measurements=[
            hd.sr.Measurement(name=codes.CERTAINTY_OF_FINDING, value=_num(decision.score),
                              unit=codes.UNIT_NONE, referenced_coordinates=_regions(lung_outlines, src_ref)),
            hd.sr.Measurement(name=codes.THRESHOLD_VALUE, value=_num(decision.threshold),
                              unit=codes.UNIT_NONE),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src_ref)],
    )


def ggo_decision_note(ggo: GgoResult) -> str | None:
    """The sentence a reader sees when GGO was not reported; None when it was (or no decision exists)."""
    if ggo.decision is None or ggo.decision.present:
        return None
    return (f"GGO not detected: image-level GGO decision score {ggo.decision.score:.3f} below its threshold "
            f"{ggo.decision.threshold:.3f} ({ggo.segmentation_model.name} {ggo.segmentation_model.version}); "
            "no GGO segment, box or extent is reported.")


def _regions(outlines: list[np.ndarray], src_ref: pydicom.Dataset) -> list[hd.sr.CoordinatesForMeasurement]:
    """SCOORD POLYLINEs on the source that a NUM is INFERRED FROM (TID 300 / TID 320).

    Every measurement group of ours carries at least one: OHIF 3.13 crashes on an SR measurement
    group whose NUMs have no spatial coordinates (``coords[0]`` of an empty list).
    """
    source_image = hd.sr.SourceImageForRegion.from_source_image(src_ref)
    return [hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=o,
                                            source_image=source_image) for o in outlines]


def _covid_parameters(covid: CovidResult) -> list[str]:
    parameters = [f"input_mode={covid.input_mode}", f"operating_threshold={_num(covid.threshold)}"]
    if covid.input_lung_model is not None:  # the covid bundle's own lung model cut its input
        parameters.append(f"input_lungs={covid.input_lung_model.name} {covid.input_lung_model.version}")
    return parameters


def _covid_input_region(result: ChestResult,
                        lung_outlines: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """What the classifier saw: the lungs (lungs-only input) or the whole image.

    ``lung_outlines`` (those of ``result.lungs.mask``, already traced for the lung group) are reused
    when the classifier's input mask is that same mask.
    """
    covid, lungs = result.covid, result.lungs
    if covid is not None and covid.input_mode == "lungs_only":
        mask = covid.input_mask if covid.input_mask is not None else lungs.mask if lungs is not None else None
        if mask is not None and lungs is not None and mask is lungs.mask and lung_outlines is not None:
            outlines = lung_outlines
        else:
            outlines = mask_outlines(mask) if mask is not None else []
        if outlines:
            return outlines
    return [image_outline(*result.image_shape)]


def _box_group(box: Box, model: ModelInfo, src_ref: pydicom.Dataset) -> _Group:
    region = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(box),
        source_image=hd.sr.SourceImageForRegion.from_source_image(src_ref),
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                      identifier=OHIF_BOX_TRACKING_IDENTIFIER),
        finding_type=codes.GROUND_GLASS_OPACITY,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
        algorithm_id=_algorithm(model),
        measurements=[hd.sr.Measurement(name=codes.CERTAINTY_OF_FINDING, value=_num(box.confidence),
                                        unit=codes.UNIT_NONE, referenced_coordinates=[region])],
    )


def segment_reference(seg: pydicom.Dataset, segment_number: int) -> hd.sr.SourceImageForMeasurementGroup:
    """A group-level "Source of Measurement" IMAGE item (TID 1501) that references one SEG segment.

    The Image SOP Instance Reference Macro (PS3.3 Table 10-3) references a segment by Referenced
    Segment Number, without Referenced Frame Number. It sits in the group, not under the NUM:
    TID 320 allows a NUM to be INFERRED FROM an IMAGE *or* SCOORDs, and the NUM carries SCOORDs.
    """
    item = hd.sr.SourceImageForMeasurementGroup(referenced_sop_class_uid=seg.SOPClassUID,
                                                referenced_sop_instance_uid=seg.SOPInstanceUID)
    item.ReferencedSOPSequence[0].ReferencedSegmentNumber = segment_number
    return item


def _segment_group(seg: pydicom.Dataset, segment_number: int, identifier: str, tracking_uid: str,
                   finding: hd.sr.CodedConcept, model: ModelInfo, name: hd.sr.CodedConcept, value: float,
                   unit: hd.sr.CodedConcept, src_ref: pydicom.Dataset, outlines: list[np.ndarray],
                   method: hd.sr.CodedConcept | None = None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group whose measurement was computed from one SEG segment.

    TID 1410 (planar ROI with a referenced segment) would say the same, but pixelmed's validator
    applies one template to *all* groups of a report, so every group of ours is a TID 1501 one.
    The group's Tracking Unique Identifier is the segment's, so a reader can pair them. The NUM
    is also INFERRED FROM the outlines of the region (see :func:`_regions`).
    """
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=identifier),
        finding_type=finding,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)] if finding != codes.LUNG else None,
        algorithm_id=_algorithm(model),
        measurements=[hd.sr.Measurement(name=name, value=value, unit=unit, method=method,
                                        referenced_coordinates=_regions(outlines, src_ref))],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src_ref),
                       segment_reference(seg, segment_number)],
    )


def lung_area_value(lungs: LungResult) -> tuple[float, hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """(value, unit, method) of the lung area: mm2 with the spacing attribute named, else pixels."""
    if lungs.area_mm2 is not None and lungs.spacing_source is not None:
        method = _AREA_METHOD[SpacingSource(lungs.spacing_source)]
        return round(float(lungs.area_mm2), 2), codes.UNIT_MM2, method
    return float(lungs.area_px), codes.UNIT_PIXELS, codes.METHOD_AREA_PIXEL_COUNT


def _library_reference(src_ref: pydicom.Dataset) -> pydicom.Dataset:
    """The dataset handed to highdicom's Image Library (TID 1600/1602).

    highdicom adds the projection-radiography descriptors of TID 1603 (Patient Orientation row
    and column, Imager Pixel Spacing) for CR/DX and reads them unconditionally. These rows are
    only meaningful when the source has them; when it lacks either, the library entry gets the
    TID 1602 descriptors (modality, rows, columns) only, by hiding the Modality from that check.
    """
    orientation = patient_orientation(src_ref)
    spacing = src_ref.get("ImagerPixelSpacing")
    if orientation is not None and spacing and len(spacing) == 2:
        return src_ref
    library_ref = pydicom.Dataset()
    library_ref.update(src_ref)
    library_ref.Modality = "OT"
    return library_ref


# CID 29 "Acquisition Modality" by Modality (0008,0060) value: the only codes TID 1602 row 1 admits.
_ACQUISITION_MODALITY = {
    str(code.value): code for code in (getattr(pydicom.sr.codedict.codes.cid29, name)
                                       for name in dir(pydicom.sr.codedict.codes.cid29))
    if isinstance(code, pydicom.sr.coding.Code)
}
_LIBRARY, _LIBRARY_GROUP, _MODALITY = "111028", "126200", "121139"


def _library_modality(report: hd.sr.ContentSequence, source: pydicom.Dataset) -> None:
    """Make the Image Library entry's Modality (TID 1602 row 1, DCID 29) an acquisition modality.

    highdicom derives it from the SOP Class, so a Secondary Capture source gets (OT, DCM, "Other"),
    which CID 29 does not contain. The source's own Modality is used when CID 29 has it (an SC of
    a CR/DX chest film); when it does not (OT, unknown), the entry keeps only its reference to the
    image: TID 1602 is optional under TID 1601, and row 1 cannot be left out of it.
    """
    code = _ACQUISITION_MODALITY.get(str(source.get("Modality", "") or "").strip())
    for item in report[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != _LIBRARY:
            continue
        for group in item.ContentSequence:
            if group.ConceptNameCodeSequence[0].CodeValue != _LIBRARY_GROUP:
                continue
            for holder in [group, *[i for i in group.ContentSequence if i.ValueType == "IMAGE"]]:
                entries = holder.get("ContentSequence", [])
                if not any(_is_modality(e) and _is_bad_modality(e) for e in entries):
                    continue
                if code is not None:
                    for entry in entries:
                        if _is_modality(entry):
                            entry.ConceptCodeSequence = [hd.sr.CodedConcept.from_code(code)]
                elif holder is group:
                    holder.ContentSequence = [e for e in entries if e.ValueType in ("IMAGE", "CONTAINER")]
                else:
                    del holder.ContentSequence


def _is_modality(item: pydicom.Dataset) -> bool:
    return item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == _MODALITY


def _is_bad_modality(item: pydicom.Dataset) -> bool:
    return str(item.ConceptCodeSequence[0].CodeValue) not in _ACQUISITION_MODALITY


def _notes(texts: list[str]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 "Qualitative Evaluations" with TEXT items (row 14)."""
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.COMMENT, value=text[:1024],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in texts
    ])
    return container


def device_observer(settings: ResultSettings) -> hd.sr.ObserverContext:
    """The node as a device observer (TID 1004); its UID is stable for one manufacturer/model/serial."""
    return hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[settings.manufacturer, settings.model_name,
                                           settings.device_serial_number]),
            name=settings.model_name,
            manufacturer_name=settings.manufacturer,
            model_name=f"{settings.model_name} {settings.software_version}"[:64],
            serial_number=settings.device_serial_number,
        ),
    )


def build_sr(source: pydicom.Dataset, result: ChestResult, ctx: ResultContext, *,
             seg: pydicom.Dataset | None = None, lung_tracking_uid: str | None = None,
             ggo_tracking_uid: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report; ``seg`` (with its tracking UIDs) is required for an analysed image."""
    src_ref = reference_copy(source)
    groups: list[_Group] = [_projection_group(result, src_ref)]
    notes = [RESEARCH_USE_NOTE]
    if result.analysed:
        if result.lungs is None or seg is None:
            raise ResultInputError(f"analysed result for {source.SOPInstanceUID} needs lungs and a SEG")
        lung_outlines = mask_outlines(result.lungs.mask) or [image_outline(*result.image_shape)]
        if result.covid is not None:
            groups.append(_covid_group(result.covid, result, src_ref, lung_outlines))
        if result.ggo is not None and result.ggo.decision is not None:
            groups.append(_ggo_decision_group(result.ggo, lung_outlines, src_ref))
            note = ggo_decision_note(result.ggo)
            if note is not None:
                notes.append(note)
        if result.ggo is not None and result.ggo.detected:
            groups += [_box_group(b, result.ggo.detection_model, src_ref) for b in result.ggo.boxes]
            if result.ggo.extent_percent is not None:
                groups.append(_segment_group(
                    seg, GGO_SEGMENT, TRACKING_GGO_EXTENT, ggo_tracking_uid or generate_uid(),
                    codes.GROUND_GLASS_OPACITY, result.ggo.segmentation_model, codes.EXTENT,
                    _num(result.ggo.extent_percent), codes.UNIT_PERCENT, src_ref,
                    mask_outlines(result.ggo.mask, max_outlines=8) or lung_outlines))
        value, unit, method = lung_area_value(result.lungs)
        groups.append(_segment_group(
            seg, LUNG_SEGMENT, TRACKING_LUNG_AREA, lung_tracking_uid or generate_uid(),
            codes.LUNG, result.lungs.model, codes.AREA, value, unit, src_ref, lung_outlines, method=method))
    else:
        notes.append(f"Image not analysed: {result.not_analysed_reason or 'no reason given'}.")
    notes += [f"Pipeline warning: {w}" for w in result.warnings]
    notes += [f"Model caution ({m.name} {m.version}): {m.caution}"
              for m in result.models.values() if m.caution]

    settings = ctx.settings
    observer = device_observer(settings)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
        referenced_images=[_library_reference(src_ref)],
    )
    report[0].ContentSequence.append(_notes(notes))
    _library_modality(report, source)
    evidence = [src_ref] + ([seg] if seg is not None else [])
    return _document(report, evidence, ctx, result)


def _document(report: hd.sr.ContentSequence, evidence: list[pydicom.Dataset], ctx: ResultContext,
              result: ChestResult | None) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR instance around a TID 1500 content tree (series 9102)."""
    settings = ctx.settings
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=ctx.series.sr,
        series_number=settings.sr_series_number,
        sop_instance_uid=ctx.sr_instance_uid,
        instance_number=ctx.instance_number,
        manufacturer=settings.manufacturer,
        is_complete=True,
        is_final=True,
        is_verified=False,
        series_description=settings.sr_series_description,
        manufacturer_model_name=settings.model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=codes.LOCAL_SCHEME, name=codes.LOCAL_SCHEME_NAME,
            responsible_organization=codes.LOCAL_SCHEME_RESPONSIBLE)],
        contributing_equipment=contributing_equipment(ctx, result),
        **ctx.common_kwargs(),
    )


# Attributes a "not analysed" report needs from its source: what it belongs to and what it cites.
NOT_ANALYSED_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_DCM = pydicom.sr.codedict.codes.DCM


def build_not_analysed_sr(source: pydicom.Dataset, text: str, ctx: ResultContext) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of an image the node failed to analyse (unreadable pixels, an analysis or
    writer error): a reader who opens the study sees that this image has no AI result, and why.

    ``source`` may be the image's header only (no Pixel Data). The report has no Imaging
    Measurements (nothing was measured; TID 1500 requires at least one of its rows 6, 8 and 12):
    Procedure Reported, the device observer, the image in the Image Library (when its header gives
    Rows and Columns) and the Qualitative Evaluations with the research-use note and ``text``,
    which must already be free of patient identity (node.phi). The image is the SR's evidence.
    """
    missing = [k for k in NOT_ANALYSED_REQUIRED if not source.get(k)]
    if missing:
        raise ResultInputError(f"source {source.get('SOPInstanceUID', '<no SOPInstanceUID>')}: missing "
                               f"{', '.join(missing)}")
    src_ref = reference_copy(source)
    root = hd.sr.ContainerContentItem(name=_DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence([
        *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
        *hd.sr.ObservationContext(observer_device_context=device_observer(ctx.settings)),
        hd.sr.CodeContentItem(name=_DCM.ProcedureReported, value=codes.PLAIN_CHEST_XRAY,
                              relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD),
    ])
    if src_ref.get("Rows") and src_ref.get("Columns"):
        root.ContentSequence.extend(hd.sr.ImageLibrary([_library_reference(src_ref)]))
    root.ContentSequence.append(_notes([RESEARCH_USE_NOTE, text]))
    report = hd.sr.ContentSequence([root], is_root=True)
    _library_modality(report, source)
    return _document(report, [src_ref], ctx, None)


def not_analysed_report(source: pydicom.Dataset, text: str, *, settings: ResultSettings | None = None,
                        series: ResultSeries | None = None, instance_number: int = 1,
                        now: datetime.datetime | None = None) -> pydicom.Dataset:
    """:func:`build_not_analysed_sr` with the study-level attributes of every result object, in the
    study's SR series (``series``) at the image's place (``instance_number``), as the worker sends it."""
    with source_person_names_as_they_are():
        ctx = make_context(source, settings or ResultSettings(), now, series=series,
                           instance_number=instance_number)
        sr = build_not_analysed_sr(source, text, ctx)
    copy_study_attributes(sr, source)
    return sr
