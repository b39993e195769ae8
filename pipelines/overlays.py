"""The one picture of the findings: the radiograph with heatmap, lung contour and GGO boxes drawn in.

The node stores it as a secondary capture (``node.results.sc``) for viewers that ignore SEG and
SR; ``cxr-node analyze`` writes the same picture as overlay.png beside plain masks for a PNG or
JPEG input, which has no patient, study or frame of reference to attach DICOM results to. The
colours are those of the SEG segments, so a reader sees the same lungs and GGO in both. Text
uses PIL's built-in font: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.results import Box, ChestResult, SourceImage

# Segment colours (also the SEG's Recommended Display CIELab values, node.results.seg).
LUNG_RGB = (40, 120, 255)
GGO_RGB = (255, 140, 0)
RESEARCH_BANNER = "RESEARCH USE - NOT FOR DIAGNOSIS"
BANNER_RGB = (255, 230, 0)
TEXT_RGB = (255, 255, 255)
PANEL_RGB = (0, 0, 0)
# Heatmap alpha at full activation; activations below HEAT_FLOOR are not drawn at all.
HEAT_ALPHA = 0.5
HEAT_FLOOR = 0.15


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
# the lowest 8-bit heat level that is drawn: the blend is confined to the rectangle holding them
_FIRST_SHOWN_LEVEL = int(np.argmax(_ALPHA_LUT[:, 0] > 0))


def _resize_u8(plane: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an 8-bit plane to (height, width) (OpenCV: a few ms for a 2048 px capture)."""
    if plane.shape == size:
        return plane
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(plane, (size[1], size[0]), interpolation=interpolation)


def _to_u8(plane: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 levels 0..255 (rounded; below 0 -> 0, above 1 -> 255, NaN -> 0)."""
    _, non_negative = cv2.threshold(np.asarray(plane, dtype=np.float32), 0.0, 0.0, cv2.THRESH_TOZERO)
    return cv2.convertScaleAbs(non_negative, alpha=255.0)  # saturates above 255


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns holding the non-zero pixels of an 8-bit plane; None when there are none."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return slice(y, y + h), slice(x, x + w)


_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int) -> _Font:
    return ImageFont.load_default(size=size)


def render_overlay(grey: np.ndarray, result: ChestResult, max_side: int) -> tuple[np.ndarray, float]:
    """The RGB capture (uint8, H x W x 3) and the scale factor applied to the source grid.

    Works on 8-bit planes throughout (the output is 8-bit): the source, the heat levels and the
    lung mask are resized as uint8, the heat colour and weight come from lookup tables, and the
    blend is integer arithmetic (weights in 1/256). The heat blend and the contour touch only the
    rectangles where heat is drawn and where the lungs are (everywhere else they change nothing).
    """
    if result.lungs is None:
        raise ValueError("cannot render an overlay without a lung mask")
    rows, cols = grey.shape
    scale = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    base = _resize_u8(_to_u8(grey), size)
    rgb = cv2.cvtColor(base, cv2.COLOR_GRAY2RGB)

    if result.covid is not None:
        level = _resize_u8(_to_u8(result.covid.heatmap), size)
        _, shown = cv2.threshold(level, _FIRST_SHOWN_LEVEL - 1, 255, cv2.THRESH_BINARY)
        heat_area = _bounding_box(shown)
        if heat_area is not None:
            level = np.ascontiguousarray(level[heat_area])
            alpha = cv2.LUT(level, _ALPHA_LUT)  # float32 weight per pixel, 0 below the floor
            colour = cv2.applyColorMap(level, HEAT_LUT.reshape(256, 1, 3))  # the LUT's RGB, as given
            rgb[heat_area] = cv2.blendLinear(np.ascontiguousarray(rgb[heat_area]), colour, 1.0 - alpha, alpha)

    thickness = max(1, round(max(size) / 500))
    lungs = _resize_u8(np.asarray(result.lungs.mask).astype(np.uint8), size, nearest=True)
    lung_area = _bounding_box(lungs)
    if lung_area is not None:
        # the border band of the mask: pixels within ``thickness`` of the outside (square
        # neighbourhood); outside the lungs' rectangle the mask is 0, as the erosion's border
        lungs = np.ascontiguousarray(lungs[lung_area])
        kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
        inner = cv2.erode(lungs, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        band = cv2.findNonZero(cv2.subtract(lungs, inner))  # (x, y) of the band's pixels
        if band is not None:
            band = band.reshape(-1, 2)
            rgb[lung_area][band[:, 1], band[:, 0]] = LUNG_RGB

    # Text, boxes and legend are drawn with Pillow on copies of the rectangles they cover only: the
    # whole capture through Pillow and back cost two copies of it (~9 ms for 2048 px).
    font_px = max(10, size[0] // 45)
    font = _font(font_px)
    if result.ggo is not None:
        for box in result.ggo.boxes:
            _draw_box(rgb, box, scale, thickness + 1, font, font_px)
    _draw_text_block(rgb, result, font, font_px)
    _draw_legend(rgb, font, font_px, heat=result.covid is not None)
    return rgb, scale


class _Region:
    """A rectangle of the capture drawn on with Pillow, in the capture's own coordinates, and
    written back on exit (later regions see what earlier ones drew)."""

    def __init__(self, rgb: np.ndarray, left: float, top: float, right: float, bottom: float) -> None:
        height, width = rgb.shape[:2]
        self.rgb = rgb
        self.left, self.top = max(0, int(left)), max(0, int(top))
        self.right, self.bottom = min(width, int(np.ceil(right)) + 1), min(height, int(np.ceil(bottom)) + 1)
        self.empty = self.right <= self.left or self.bottom <= self.top  # wholly outside: drawn nowhere

    def __enter__(self) -> _Region:
        patch = self.rgb[self.top:self.bottom, self.left:self.right]
        self.image = Image.new("RGB", (1, 1)) if self.empty else Image.fromarray(patch, mode="RGB")
        self.draw = ImageDraw.Draw(self.image)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.empty:
            self.rgb[self.top:self.bottom, self.left:self.right] = np.asarray(self.image)

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Capture coordinates -> this region's."""
        return x - self.left, y - self.top

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [*self.at(x0, y0), *self.at(x1, y1)]


def _draw_box(rgb: np.ndarray, box: Box, scale: float, width: int, font: _Font, font_px: int) -> None:
    """A GGO box with its score above it."""
    x0, y0, x1, y1 = box.x0 * scale, box.y0 * scale, box.x1 * scale - 1, box.y1 * scale - 1
    label = f"GGO {box.confidence:.2f}"
    label_y = max(0, y0 - font_px - 2)
    label_right = x0 + font.getlength(label)
    with _Region(rgb, x0, min(label_y, y0), max(x1, label_right), max(y1, label_y + font_px + 2)) as region:
        region.draw.rectangle(region.box(x0, y0, x1, y1), outline=GGO_RGB, width=width)
        region.draw.text(region.at(x0, label_y), label, fill=GGO_RGB, font=font)


def _summary_lines(result: ChestResult) -> list[str]:
    lines = []
    if result.covid is not None:
        verdict = "POSITIVE" if result.covid.positive else "negative"
        lines.append(f"COVID-19: p={result.covid.probability:.2f} "
                     f"(threshold {result.covid.threshold:.2f}) {verdict}")
    if result.ggo is not None and not result.ggo.detected and result.ggo.decision is not None:
        lines.append(f"GGO: not detected (score {result.ggo.decision.score:.2f})")
    elif result.ggo is not None and result.ggo.extent_percent is not None:
        lines.append(f"GGO extent: {result.ggo.extent_percent:.1f} % of lung area, "
                     f"{len(result.ggo.boxes)} box(es)")
    return lines


def _draw_text_block(rgb: np.ndarray, result: ChestResult, font: _Font, font_px: int) -> None:
    """The research-use banner and the findings' summary, top left, on black panels."""
    pad = max(2, font_px // 4)
    lines = [RESEARCH_BANNER, *_summary_lines(result)]
    right = max(font.getbbox(line)[2] for line in lines) + 2 * pad
    bottom = pad + sum(font.getbbox(line)[3] + 2 * pad for line in lines) + pad
    with _Region(rgb, 0, 0, right, bottom) as region:
        y: float = pad
        for i, line in enumerate(lines):
            left, top, text_right, text_bottom = region.draw.textbbox(region.at(pad, y), line, font=font)
            region.draw.rectangle([left - pad, top - pad, text_right + pad, text_bottom + pad],
                                  fill=PANEL_RGB)
            region.draw.text(region.at(pad, y), line, fill=BANNER_RGB if i == 0 else TEXT_RGB, font=font)
            y = text_bottom + region.top + 2 * pad


def _draw_legend(rgb: np.ndarray, font: _Font, font_px: int, *, heat: bool) -> None:
    """Bottom-right legend: Grad-CAM colour bar (0..1), lung contour and GGO box swatches."""
    height, width = rgb.shape[:2]
    pad = max(2, font_px // 4)
    bar_w, bar_h = max(40, width // 5), max(6, font_px // 2)
    entries = [("Lung contour", LUNG_RGB), ("GGO box (score)", GGO_RGB)]
    text_w = max(font.getlength(t) for t, _ in entries + [("Grad-CAM 0..1", (0, 0, 0))])
    panel_w = int(max(bar_w, text_w + font_px + pad) + 3 * pad)
    rows = len(entries) + (2 if heat else 0)
    panel_h = int(rows * (font_px + pad) + 3 * pad)
    x0, y0 = width - panel_w - pad, height - panel_h - pad
    if x0 < 0 or y0 < 0:
        return  # image too small for a legend; the banner is still drawn
    with _Region(rgb, x0, y0, x0 + panel_w, y0 + panel_h) as region:
        draw = region.draw
        draw.rectangle(region.box(x0, y0, x0 + panel_w, y0 + panel_h), fill=PANEL_RGB)
        x, y = x0 + pad, y0 + pad
        if heat:
            draw.text(region.at(x, y), "Grad-CAM 0..1", fill=TEXT_RGB, font=font)
            y += font_px + pad
            ramp = heat_colormap(np.linspace(0.0, 1.0, bar_w))  # one colour per column, rows y..y+bar_h
            ramp_image = Image.fromarray(np.repeat(ramp[None], bar_h + 1, axis=0), mode="RGB")
            ramp_x, ramp_y = region.at(x, y)
            region.image.paste(ramp_image, (int(ramp_x), int(ramp_y)))
            y += font_px + pad
        for label, colour in entries:
            draw.rectangle(region.box(x, y + font_px // 4, x + font_px // 2, y + 3 * font_px // 4),
                           outline=colour, width=2)
            draw.text(region.at(x + font_px, y), label, fill=TEXT_RGB, font=font)
            y += font_px + pad


def write_png_outputs(image: SourceImage, result: ChestResult, out_dir: Path) -> list[Path]:
    """lungs_mask.png, ggo_mask.png (0/255), heatmap.png (0-255) and overlay.png; nothing for a lateral."""
    if not result.analysed:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(img: Image.Image, name: str) -> None:
        path = out_dir / name
        img.save(path)
        written.append(path)

    if result.lungs is not None:
        save(Image.fromarray(result.lungs.mask.astype(np.uint8) * 255, mode="L"), "lungs_mask.png")
    if result.ggo is not None:
        save(Image.fromarray(result.ggo.mask.astype(np.uint8) * 255, mode="L"), "ggo_mask.png")
    if result.covid is not None:
        save(Image.fromarray((result.covid.heatmap * 255).round().astype(np.uint8), mode="L"), "heatmap.png")
    if result.lungs is not None:
        pixels, _ = render_overlay(image.pixels, result, max(image.shape))
        save(Image.fromarray(pixels, mode="RGB"), "overlay.png")
    return written
