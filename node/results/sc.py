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

import cv2
import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

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
# Stored natively by default (ResultSettings.sc_transfer_syntax): JPEG 2000 makes a 1683x2048
# capture 2.9 MB instead of 10 MB but costs ~0.5 s; RLE gives 8.4 MB (noise and gradients defeat
# run lengths). Any choice is lossless, so burned-in text and lines stay sharp. In JPEG 2000 the
# colour components go through the reversible colour transform, so the Photometric Interpretation
# is YBR_RCT (PS3.5 8.2.4); decoders return the RGB pixels exactly.
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


# The colour map and the blend weight per 8-bit heat level: the overlay looks values up in these
# tables (OpenCV LUT / applyColorMap) instead of interpolating 3 colour channels over millions of
# pixels (a 2048 px capture: ~200 ms -> a few ms). 256 levels are finer than the 8-bit output shows.
_HEAT_LEVELS = np.linspace(0.0, 1.0, 256)
HEAT_LUT = heat_colormap(_HEAT_LEVELS)
# blend weight per level: HEAT_ALPHA x activation, 0 below the floor
_ALPHA_LUT = np.where(_HEAT_LEVELS >= HEAT_FLOOR, HEAT_ALPHA * _HEAT_LEVELS, 0.0).astype(np.float32)
_ALPHA_LUT = _ALPHA_LUT.reshape(256, 1)


def _resize_u8(plane: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an 8-bit plane to (height, width) (OpenCV: a few ms for a 2048 px capture)."""
    if plane.shape == size:
        return plane
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(plane, (size[1], size[0]), interpolation=interpolation)


def _to_u8(plane: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 levels 0..255 (rounded, clipped)."""
    return cv2.convertScaleAbs(np.clip(np.asarray(plane, dtype=np.float32), 0.0, 1.0), alpha=255.0)


_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int) -> _Font:
    return ImageFont.load_default(size=size)


def render_overlay(grey: np.ndarray, result: ChestResult, max_side: int) -> tuple[np.ndarray, float]:
    """The RGB capture (uint8, H x W x 3) and the scale factor applied to the source grid.

    Works on 8-bit planes throughout (the output is 8-bit): the source, the heat levels and the
    lung mask are resized as uint8, the heat colour and weight come from lookup tables, and the
    blend is integer arithmetic (weights in 1/256).
    """
    if result.lungs is None:
        raise ResultInputError("cannot render a secondary capture without a lung mask")
    rows, cols = grey.shape
    scale = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    base = _resize_u8(_to_u8(grey), size)
    rgb = cv2.cvtColor(base, cv2.COLOR_GRAY2RGB)

    if result.covid is not None:
        level = _resize_u8(_to_u8(result.covid.heatmap), size)
        alpha = cv2.LUT(level, _ALPHA_LUT)  # float32 weight per pixel, 0 below the floor
        colour = cv2.applyColorMap(level, HEAT_LUT.reshape(256, 1, 3))  # the LUT's RGB, as given
        rgb = cv2.blendLinear(rgb, colour, 1.0 - alpha, alpha)

    thickness = max(1, round(max(size) / 500))
    lungs = _resize_u8(np.asarray(result.lungs.mask).astype(np.uint8), size, nearest=True)
    # the border band of the mask: pixels within ``thickness`` of the outside (square neighbourhood)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    inner = cv2.erode(lungs, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    band = np.flatnonzero(cv2.subtract(lungs, inner))  # a thin band: index it, do not mask the image
    rgb.reshape(-1, 3)[band] = LUNG_RGB

    image = Image.fromarray(rgb, mode="RGB")
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


def _draw_text_block(draw: ImageDraw.ImageDraw, result: ChestResult, font: _Font,
                     font_px: int) -> None:
    pad = max(2, font_px // 4)
    y: float = pad
    for i, line in enumerate([RESEARCH_BANNER, *_summary_lines(result)]):
        left, top, right, bottom = draw.textbbox((pad, y), line, font=font)
        draw.rectangle([left - pad, top - pad, right + pad, bottom + pad], fill=PANEL_RGB)
        draw.text((pad, y), line, fill=BANNER_RGB if i == 0 else TEXT_RGB, font=font)
        y = bottom + 2 * pad


def _draw_legend(draw: ImageDraw.ImageDraw, size: tuple[int, int], font: _Font, font_px: int,
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
