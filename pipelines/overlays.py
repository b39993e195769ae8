"""PNG outputs for non-DICOM input (research images): masks and a heatmap/box overlay.

DICOM input gets SEG/SR/secondary capture from ``node.results``; a PNG/JPEG has no patient, study or
frame of reference to attach those to, so ``cxr-node analyze`` writes plain PNGs at the source size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.results import ChestResult, SourceImage

HEATMAP_ALPHA = 0.4


def _colormap(values: np.ndarray) -> np.ndarray:
    """A blue-to-red ramp (jet-like) for a [0, 1] map -> uint8 RGB; no matplotlib needed."""
    v = np.clip(values, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay_image(image: SourceImage, result: ChestResult) -> Image.Image:
    """The grey image with the Grad-CAM heatmap blended in, lung outline (green) and GGO boxes (yellow)."""
    grey = (np.clip(image.pixels, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    if result.covid is not None:
        heat = result.covid.heatmap
        alpha = (HEATMAP_ALPHA * heat)[:, :, None]
        rgb = rgb * (1 - alpha) + _colormap(heat).astype(np.float32) * alpha
    if result.lungs is not None:
        mask = result.lungs.mask
        from scipy import ndimage

        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(max(image.shape) / 500)))
        rgb[edge] = (0, 255, 0)
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), mode="RGB")
    if result.ggo is not None and result.ggo.boxes:
        draw = ImageDraw.Draw(out)
        width = max(1, round(max(image.shape) / 400))
        for box in result.ggo.boxes:
            draw.rectangle([box.x0, box.y0, box.x1 - 1, box.y1 - 1], outline=(255, 255, 0), width=width)
    return out


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
    save(overlay_image(image, result), "overlay.png")
    return written
