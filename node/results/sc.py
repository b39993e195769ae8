"""Secondary Capture (PS3.3 A.8.1) of the radiograph with the AI findings burned in.

What a radiologist sees on any PACS viewer, even one that ignores SEG and SR: the source in
presentation polarity, the Grad-CAM heatmap of the COVID-19 classifier, the lung contour, the
GGO boxes with their scores, a colour legend, and the text "RESEARCH USE - NOT FOR DIAGNOSIS".
Burned In Annotation is therefore YES (General Image module, PS3.3 C.7.6.1; SC IOD, A.8.1).

The capture keeps the source's pixel grid (downscaled uniformly when its longest side exceeds
``ResultSettings.sc_max_side``, with Pixel Spacing scaled to match), so positions on it agree
with the SEG and the SR coordinates. Text uses PIL's built-in font: nothing is downloaded.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from node.results.common import (
    ResultContext,
    ResultInputError,
    contributing_equipment,
    patient_orientation,
    reference_copy,
)
from node.results.seg import GGO_RGB, LUNG_RGB
from pipelines.image import load_dicom
from pipelines.results import ChestResult, SourceImage

RESEARCH_BANNER = "RESEARCH USE - NOT FOR DIAGNOSIS"
BANNER_RGB = (255, 230, 0)
TEXT_RGB = (255, 255, 255)
PANEL_RGB = (0, 0, 0)
# Heatmap alpha at full activation; activations below HEAT_FLOOR are not drawn at all.
HEAT_ALPHA = 0.5
HEAT_FLOOR = 0.15
# Projection radiographs are conventionally displayed as if facing the patient: rows run to the
# patient's left, columns to the feet (PS3.3 C.7.6.1.1.1). Used only when the source has none.
DEFAULT_PATIENT_ORIENTATION = ("L", "F")
# Lossless, so the burned-in text and lines stay sharp; JPEG 2000 makes a 1683x2048 capture
# 2.9 MB in 0.7 s where RLE gives 8.4 MB (noise and gradients defeat run lengths).
# The colour components go through JPEG 2000's reversible colour transform, so the Photometric
# Interpretation is YBR_RCT (PS3.5 8.2.4); decoders return the RGB pixels exactly.
SC_TRANSFER_SYNTAX = pydicom.uid.JPEG2000Lossless
SC_PHOTOMETRIC = hd.PhotometricInterpretationValues.YBR_RCT
SC_PHOTOMETRIC_NATIVE = hd.PhotometricInterpretationValues.RGB


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """A "jet"-like colour map (blue-cyan-yellow-red) for values in [0, 1] -> uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float32)
    out = np.empty(v.shape[:-1] + (3,), dtype=np.float32)
    for c in range(3):
        out[..., c] = np.interp(v[..., 0], anchors, colours[:, c])
    return out.astype(np.uint8)


def _resize(plane: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D float/bool plane to (height, width)."""
    if plane.shape == size:
        return plane
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    image = Image.fromarray(plane.astype(np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), mode))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_overlay(grey: np.ndarray, result: ChestResult, max_side: int) -> tuple[np.ndarray, float]:
    """The RGB capture (uint8, H x W x 3) and the scale factor applied to the source grid."""
    if result.lungs is None:
        raise ResultInputError("cannot render a secondary capture without a lung mask")
    rows, cols = grey.shape
    scale = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    base = np.clip(_resize(grey.astype(np.float32), size), 0.0, 1.0) * 255.0
    rgb = np.repeat(base[..., None], 3, axis=-1)

    if result.covid is not None:
        heat = np.clip(_resize(np.asarray(result.covid.heatmap, np.float32), size), 0.0, 1.0)
        alpha = np.where(heat >= HEAT_FLOOR, HEAT_ALPHA * heat, 0.0)[..., None]
        rgb = rgb * (1.0 - alpha) + heat_colormap(heat).astype(np.float32) * alpha

    thickness = max(1, round(max(size) / 500))
    lungs = _resize(np.asarray(result.lungs.mask, np.float32), size, nearest=True) > 0.5
    contour = lungs & ~ndimage.binary_erosion(lungs, iterations=thickness, border_value=0)
    rgb[contour] = LUNG_RGB

    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    font_px = max(10, size[0] // 45)
    font = _font(font_px)
    if result.ggo is not None:
        for box in result.ggo.boxes:
            xy = [box.x0 * scale, box.y0 * scale, box.x1 * scale - 1, box.y1 * scale - 1]
            draw.rectangle(xy, outline=GGO_RGB, width=thickness + 1)
            draw.text((xy[0], max(0, xy[1] - font_px - 2)), f"GGO {box.confidence:.2f}", fill=GGO_RGB,
                      font=font)
    _draw_text_block(draw, result, font, font_px)
    _draw_legend(draw, size, font, font_px, heat=result.covid is not None)
    return np.asarray(image), scale


def _summary_lines(result: ChestResult) -> list[str]:
    lines = []
    if result.covid is not None:
        verdict = "POSITIVE" if result.covid.positive else "negative"
        lines.append(f"COVID-19: p={result.covid.probability:.2f} "
                     f"(threshold {result.covid.threshold:.2f}) {verdict}")
    if result.ggo is not None and result.ggo.extent_percent is not None:
        lines.append(f"GGO extent: {result.ggo.extent_percent:.1f} % of lung area, "
                     f"{len(result.ggo.boxes)} box(es)")
    return lines


def _draw_text_block(draw: ImageDraw.ImageDraw, result: ChestResult, font: ImageFont.ImageFont,
                     font_px: int) -> None:
    pad = max(2, font_px // 4)
    y = pad
    for i, line in enumerate([RESEARCH_BANNER, *_summary_lines(result)]):
        left, top, right, bottom = draw.textbbox((pad, y), line, font=font)
        draw.rectangle([left - pad, top - pad, right + pad, bottom + pad], fill=PANEL_RGB)
        draw.text((pad, y), line, fill=BANNER_RGB if i == 0 else TEXT_RGB, font=font)
        y = bottom + 2 * pad


def _draw_legend(draw: ImageDraw.ImageDraw, size: tuple[int, int], font: ImageFont.ImageFont, font_px: int,
                 *, heat: bool) -> None:
    """Bottom-right legend: Grad-CAM colour bar (0..1), lung contour and GGO box swatches."""
    height, width = size
    pad = max(2, font_px // 4)
    bar_w, bar_h = max(40, width // 5), max(6, font_px // 2)
    entries = [("Lung contour", LUNG_RGB), ("GGO box (score)", GGO_RGB)]
    text_w = max(draw.textlength(t, font=font) for t, _ in entries + [("Grad-CAM 0..1", (0, 0, 0))])
    panel_w = int(max(bar_w, text_w + font_px + pad) + 3 * pad)
    rows = len(entries) + (2 if heat else 0)
    panel_h = int(rows * (font_px + pad) + 3 * pad)
    x0, y0 = width - panel_w - pad, height - panel_h - pad
    if x0 < 0 or y0 < 0:
        return  # image too small for a legend; the banner is still drawn
    draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], fill=PANEL_RGB)
    x, y = x0 + pad, y0 + pad
    if heat:
        draw.text((x, y), "Grad-CAM 0..1", fill=TEXT_RGB, font=font)
        y += font_px + pad
        ramp = heat_colormap(np.linspace(0.0, 1.0, bar_w))
        for i in range(bar_w):
            draw.line([(x + i, y), (x + i, y + bar_h)], fill=tuple(int(c) for c in ramp[i]))
        y += font_px + pad
    for label, colour in entries:
        draw.rectangle([x, y + font_px // 4, x + font_px // 2, y + 3 * font_px // 4], outline=colour,
                       width=2)
        draw.text((x + font_px, y), label, fill=TEXT_RGB, font=font)
        y += font_px + pad


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
    pixels, scale = render_overlay(grey, result, settings.sc_max_side)
    spacing = None
    if result.spacing is not None:
        spacing = (result.spacing.row_mm / scale, result.spacing.column_mm / scale)
    ref = reference_copy(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation=SC_PHOTOMETRIC if settings.compress else SC_PHOTOMETRIC_NATIVE,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=ctx.series.sc,
        series_number=settings.sc_series_number,
        sop_instance_uid=ctx.sc_instance_uid,
        instance_number=ctx.instance_number,
        manufacturer=settings.manufacturer,
        pixel_spacing=spacing,
        patient_orientation=patient_orientation(source) or DEFAULT_PATIENT_ORIENTATION,
        transfer_syntax_uid=SC_TRANSFER_SYNTAX if settings.compress else pydicom.uid.ExplicitVRLittleEndian,
        contributing_equipment=contributing_equipment(ctx, result),
        manufacturer_model_name=settings.model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        series_description=settings.sc_series_description,
        **ctx.common_kwargs(),
    )
    sc.ConversionType = "WSD"  # SC Equipment module (PS3.3 C.8.6.1): rendered by a workstation
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = ("Grad-CAM heatmap, lung contour, GGO boxes and research-use text burned "
                                "into the source radiograph")
    derived_from = Dataset()
    derived_from.ReferencedSOPClassUID = source.SOPClassUID
    derived_from.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [derived_from]
    return sc
