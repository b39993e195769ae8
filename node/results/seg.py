"""Segmentation IOD (PS3.3 A.51) with the lungs and the ground-glass opacity of one radiograph.

A projection radiograph has no Frame of Reference, so highdicom writes neither plane position
nor plane orientation. Two additions make the object usable, both verified (STACK.md):
* Pixel Measures (PS3.3 C.7.6.16.2.1) with the source's spacing and a nominal Slice Thickness
  of 1.0, without which highdicom 0.28 cannot read its own SEG back;
* Plane Orientation with Image Orientation (Patient) [1,0,0,0,1,0] in the Shared Functional
  Groups (PS3.3 C.7.6.16.2.4): OHIF 3.13's SEG loader dereferences it unconditionally.
OHIF 3.13 shows BINARY segmentations only ("Fractional segmentations are not yet supported"):
the FRACTIONAL option is for other consumers.
Both frames are always written (``omit_empty_frames=False``): an empty GGO frame still tells a
reader "no GGO found", and OHIF expects one frame per segment of a single-frame source.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from node.results import codes
from node.results.common import (
    ResultContext,
    ResultInputError,
    contributing_equipment,
    patient_orientation,
    reference_copy,
    spacing_tuple,
)
from pipelines.overlays import GGO_RGB, LUNG_RGB  # the display colours: those of the secondary capture
from pipelines.results import ChestResult, ModelInfo

# JPEG 2000 Lossless, each frame its own fragment (PS3.5 A.4), for BINARY and FRACTIONAL alike.
# Native BINARY packs 1-bit frames back to back; Orthanc 1.10 then refuses to serve any frame
# ("Bad number of columns for a black-and-white image") unless Columns is a multiple of 8, and
# OHIF fetches a multi-frame SEG frame by frame, so the SEG never loads. Encapsulated frames are
# served as stored; OHIF 3.13 decodes them, and the file is ~100x smaller (12 KB vs 1.2 MB).
SEG_TRANSFER_SYNTAX = pydicom.uid.JPEG2000Lossless

LUNG_SEGMENT = 1
GGO_SEGMENT = 2
LUNG_LABEL = "Lungs"
GGO_LABEL = "Ground glass opacity"
# Without a spacing in the source the SEG still needs Pixel Measures (highdicom's reader fails
# without it); 1.0 mm is written and documented as nominal in deploy/conformance/results.md.
# Measurements in mm come only from the SR, which says when there is no spacing.
NOMINAL_SPACING_MM = (1.0, 1.0)


def _algorithm(model: ModelInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name[:64],
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=model.version[:64],
        source="cxr-node",
        parameters={"architecture": model.architecture, "task": model.task},
    )


def _description(number: int, label: str, category: hd.sr.CodedConcept, kind: hd.sr.CodedConcept,
                 model: ModelInfo, rgb: tuple[int, int, int], tracking_uid: str,
                 anatomic_regions: list[hd.sr.CodedConcept] | None = None) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(model),
        tracking_uid=tracking_uid,
        tracking_id=label,
        anatomic_regions=anatomic_regions,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


def _checked_mask(name: str, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape != shape:
        raise ResultInputError(f"{name} mask shape {mask.shape} != source grid {shape}")
    return np.asarray(mask).astype(bool)


def build_seg(source: pydicom.Dataset, result: ChestResult, ctx: ResultContext,
              *, lung_tracking_uid: str, ggo_tracking_uid: str) -> hd.seg.Segmentation:
    """The SEG of an analysed frontal image: segment 1 lungs, segment 2 GGO.

    The GGO segment is left out when the pipeline skipped the GGO stage (``result.ggo`` None,
    e.g. lungs-only input with an empty lung mask): an empty segment would claim "no GGO". It is
    left out too when the image-level GGO decision says absent (``ggo.detected`` False, specific
    first): the SR then says "not detected" with the decision's score. The lung segment always stays,
    so the SEG is never without a segment.
    """
    if not result.analysed or result.lungs is None:
        raise ResultInputError(f"result for {source.SOPInstanceUID} has no lung mask (not analysed)")
    shape = (int(source.Rows), int(source.Columns))
    planes: list[np.ndarray] = [_checked_mask("lung", result.lungs.mask, shape)]
    descriptions = [
        _description(LUNG_SEGMENT, LUNG_LABEL, codes.ANATOMICAL_STRUCTURE, codes.LUNG,
                     result.lungs.model, LUNG_RGB, lung_tracking_uid),
    ]
    ggo = result.ggo if result.ggo is not None and result.ggo.detected else None
    fractional = ctx.settings.fractional_ggo and ggo is not None and ggo.probability_map is not None
    if ggo is not None:
        if fractional:
            prob = np.asarray(ggo.probability_map, dtype=np.float32)
            if prob.shape != shape:
                raise ResultInputError(f"GGO probability map shape {prob.shape} != source grid {shape}")
            planes.append(np.clip(prob, 0.0, 1.0))
        else:
            planes.append(_checked_mask("GGO", ggo.mask, shape))
        descriptions.append(_description(
            GGO_SEGMENT, GGO_LABEL, codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.GROUND_GLASS_OPACITY,
            ggo.segmentation_model, GGO_RGB, ggo_tracking_uid, anatomic_regions=[codes.LUNG]))
    if fractional:
        pixels = np.stack([p.astype(np.float32) for p in planes], axis=-1)[None]
        seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        pixels = np.stack(planes, axis=-1)[None].astype(np.uint8)
        seg_type = hd.seg.SegmentationTypeValues.BINARY

    spacing = spacing_tuple(result) or NOMINAL_SPACING_MM
    settings = ctx.settings
    seg = hd.seg.Segmentation(
        source_images=[reference_copy(source)],
        pixel_array=pixels,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=ctx.series.seg,
        series_number=settings.seg_series_number,
        sop_instance_uid=ctx.seg_instance_uid,
        instance_number=ctx.instance_number,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=settings.model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional else None,
        content_description="AI lung and GGO segmentation, research use only",
        content_label="CXR_AI_SEG",
        series_description=settings.seg_series_description,
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=1.0),
        omit_empty_frames=False,
        contributing_equipment=contributing_equipment(ctx, result),
        transfer_syntax_uid=settings.seg_transfer_syntax,
        **ctx.common_kwargs(),
    )
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [orientation]
    po = patient_orientation(source)
    if po is not None:
        seg.PatientOrientation = list(po)
    return seg
