"""Secondary Capture (PS3.3 A.8.1) of the radiograph with the AI findings burned in.

What a radiologist sees on any PACS viewer, even one that ignores SEG and SR: the source in
presentation polarity, the Grad-CAM heatmap of the COVID-19 classifier, the lung contour, the
GGO boxes with their scores, a colour legend, and the text "RESEARCH USE - NOT FOR DIAGNOSIS".
Burned In Annotation is therefore YES (General Image module, PS3.3 C.7.6.1; SC IOD, A.8.1). The
picture is drawn by :func:`pipelines.overlays.render_overlay`, the one renderer of the findings.

The capture keeps the source's pixel grid (downscaled uniformly when its longest side exceeds
``ResultSettings.sc_max_side``, with Pixel Spacing scaled to match), so positions on it agree
with the SEG and the SR coordinates.
"""

from __future__ import annotations

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from node.results.common import (
    ResultContext,
    ResultInputError,
    contributing_equipment,
    patient_orientation,
    reference_copy,
)
from pipelines.image import load_dicom
from pipelines.overlays import render_overlay
from pipelines.results import ChestResult, SourceImage

# Projection radiographs are conventionally displayed as if facing the patient: rows run to the
# patient's left, columns to the feet (PS3.3 C.7.6.1.1.1). Used only when the source has none.
DEFAULT_PATIENT_ORIENTATION = ("L", "F")
# Stored natively by default (ResultSettings.sc_transfer_syntax): JPEG 2000 makes a 1683x2048
# capture 2.9 MB instead of 10 MB but costs ~0.5 s; RLE gives 8.4 MB (noise and gradients defeat
# run lengths). Any choice is lossless, so burned-in text and lines stay sharp. In JPEG 2000 the
# colour components go through the reversible colour transform, so the Photometric Interpretation
# is YBR_RCT (PS3.5 8.2.4); decoders return the RGB pixels exactly.
SC_TRANSFER_SYNTAX = pydicom.uid.JPEG2000Lossless
SC_PHOTOMETRIC = hd.PhotometricInterpretationValues.YBR_RCT
SC_PHOTOMETRIC_NATIVE = hd.PhotometricInterpretationValues.RGB


def build_sc(source: pydicom.Dataset, result: ChestResult, ctx: ResultContext,
             image: SourceImage | None = None) -> hd.sc.SCImage:
    """The RGB secondary capture of an analysed frontal image.

    ``image`` is the pipeline's decoded source (presentation polarity, [0, 1]); without it the
    source's Pixel Data is decoded again with the pipeline's own loader.
    """
    if not result.analysed:
        raise ResultInputError(f"no secondary capture for a not analysed image ({source.SOPInstanceUID})")
    grey = (image if image is not None else load_dicom(source)).pixels
    if grey.shape != tuple(result.image_shape):
        raise ResultInputError(f"decoded source {grey.shape} != result grid {tuple(result.image_shape)}")
    settings = ctx.settings
    try:
        pixels, scale = render_overlay(grey, result, settings.sc_max_side)
    except ValueError as exc:
        raise ResultInputError(f"no secondary capture: {exc}") from exc
    spacing = None
    if result.spacing is not None:
        spacing = (result.spacing.row_mm / scale, result.spacing.column_mm / scale)
    ref = reference_copy(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation=(SC_PHOTOMETRIC if settings.sc_transfer_syntax == SC_TRANSFER_SYNTAX
                                    else SC_PHOTOMETRIC_NATIVE),
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=ctx.series.sc,
        series_number=settings.sc_series_number,
        sop_instance_uid=ctx.sc_instance_uid,
        instance_number=ctx.instance_number,
        manufacturer=settings.manufacturer,
        pixel_spacing=spacing,  # type: ignore[arg-type]  # highdicom 0.28 annotates it tuple[int, int]
        patient_orientation=patient_orientation(source) or DEFAULT_PATIENT_ORIENTATION,
        transfer_syntax_uid=settings.sc_transfer_syntax,
        contributing_equipment=contributing_equipment(ctx, result),
        manufacturer_model_name=settings.model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        series_description=settings.sc_series_description,
        **ctx.common_kwargs(),
    )
    sc.ConversionType = "WSD"  # SC Equipment module (PS3.3 C.8.6.1): rendered by a workstation
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = str(ref.get("BodyPartExamined") or "CHEST")
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = ("Grad-CAM heatmap, lung contour, GGO boxes and research-use text burned "
                                "into the source radiograph")
    derived_from = Dataset()
    derived_from.ReferencedSOPClassUID = source.SOPClassUID
    derived_from.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [derived_from]
    return sc
