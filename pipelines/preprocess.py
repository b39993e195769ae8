"""The one preprocessing shared by training and inference.

A model must see the same pixels in training and in production, so ``training/`` and
``pipelines/tasks`` both build their network input with :func:`prepare_input` (and YOLO's with
:func:`prepare_yolo_image`), parametrised only by the bundle's ``input`` metadata (:class:`InputSpec`).

Geometry. :class:`Letterbox` maps a source image (optionally a crop of it) into a ``size x size``
model grid: scale to fit keeping the aspect ratio, pad centred. Pixel ``i`` of the source covers
the continuous interval ``[i, i+1)``; a continuous source coordinate ``x`` maps to
``(x - crop_x0) * sx + pad_left`` in the model grid, with ``sx = scaled_w / crop_w`` exactly (the
scaled size is rounded, the scale factor is derived from it, so the forward resize and the inverse
agree to the last pixel). Masks, heatmaps and boxes go back with :meth:`Letterbox.to_source` and
:meth:`Letterbox.boxes_to_source`, because the SEG, SR and secondary capture refer to the source grid.

Intensity. Pixels arrive in presentation polarity in [0, 1] (``pipelines.image``). The normalisation
is a z-score over the *reference* pixels: the image content (padding excluded) in ``whole_image``
mode, the lung pixels only in ``lungs_only`` mode, which harmonises devices and removes the
hospital-specific background a naive COVID model learns (data README, "What a naive model learns").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import PipelineError

InputMode = Literal["whole_image", "lungs_only"]
Normalization = Literal["zscore", "unit", "equalize"]

# ultralytics pads its own letterbox with grey 114; using the same value keeps YOLO's training
# augmentation and our inference letterbox consistent.
YOLO_PAD_VALUE = 114 / 255.0
ZSCORE_CLIP = 5.0


class EmptyLungMaskError(PipelineError, ValueError):
    """``lungs_only`` input was requested but the lung mask has no pixel."""


@dataclass(frozen=True)
class InputSpec:
    """The ``input`` block of a bundle's metadata: how to turn a source image into the network input."""

    size: int = 256
    resize: Literal["letterbox", "stretch"] = "letterbox"
    normalization: Normalization = "zscore"
    mode: InputMode = "whole_image"
    channels: int = 1
    # lungs_only: margin around the lung bounding box, as a fraction of the box's height/width.
    lung_margin: float = 0.05
    # Value (in normalised units) of padding and, in lungs_only mode, of every non-lung pixel.
    outside_value: float = 0.0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"input size must be >= 8, got {self.size}")
        if self.resize not in ("letterbox", "stretch"):
            raise ValueError(f"unknown resize rule {self.resize!r} (letterbox|stretch)")
        if self.normalization not in ("zscore", "unit", "equalize"):
            raise ValueError(f"unknown intensity normalisation {self.normalization!r} (zscore|unit|equalize)")
        if self.mode not in ("whole_image", "lungs_only"):
            raise ValueError(f"unknown input mode {self.mode!r} (whole_image|lungs_only)")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.lung_margin <= 1.0:
            raise ValueError(f"lung_margin must be in [0, 1], got {self.lung_margin}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown input keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class Letterbox:
    """Exact geometry between a source grid (or a crop of it) and a square model grid."""

    source_shape: tuple[int, int]
    crop: tuple[int, int, int, int]  # y0, x0, y1, x1 in source pixels (y1/x1 exclusive)
    size: int
    scaled: tuple[int, int]  # content height, width in the model grid
    pad: tuple[int, int]  # top, left

    @classmethod
    def fit(
        cls,
        source_shape: tuple[int, int],
        size: int,
        crop: tuple[int, int, int, int] | None = None,
        rule: Literal["letterbox", "stretch"] = "letterbox",
    ) -> Letterbox:
        h, w = int(source_shape[0]), int(source_shape[1])
        y0, x0, y1, x1 = crop if crop is not None else (0, 0, h, w)
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"crop {crop} outside a {h}x{w} image or empty")
        ch, cw = y1 - y0, x1 - x0
        if rule == "stretch":
            return cls((h, w), (y0, x0, y1, x1), size, (size, size), (0, 0))
        scale = size / max(ch, cw)
        sh, sw = max(1, min(size, round(ch * scale))), max(1, min(size, round(cw * scale)))
        return cls((h, w), (y0, x0, y1, x1), size, (sh, sw), ((size - sh) // 2, (size - sw) // 2))

    @property
    def crop_shape(self) -> tuple[int, int]:
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    @property
    def scale_yx(self) -> tuple[float, float]:
        ch, cw = self.crop_shape
        return self.scaled[0] / ch, self.scaled[1] / cw

    @property
    def content(self) -> tuple[slice, slice]:
        """Slices of the model grid holding image content (the rest is padding)."""
        top, left = self.pad
        return slice(top, top + self.scaled[0]), slice(left, left + self.scaled[1])

    def content_mask(self) -> np.ndarray:
        valid = np.zeros((self.size, self.size), dtype=bool)
        valid[self.content] = True
        return valid

    # -- source -> model ------------------------------------------------------------------------
    def image_to_model(self, image: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
        """Resize a source-grid float image (H, W) into the model grid (bilinear, antialiased)."""
        y0, x0, y1, x1 = self.crop
        crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1], dtype=np.float32))
        resized = F.interpolate(
            crop[None, None], size=self.scaled, mode="bilinear", align_corners=False, antialias=True
        )[0, 0]
        out = np.full((self.size, self.size), pad_value, dtype=np.float32)
        out[self.content] = resized.numpy()
        return out

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """Resize a source-grid boolean mask into the model grid (area fraction >= 0.5)."""
        return self.image_to_model(mask.astype(np.float32)) >= 0.5

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) x0, y0, x1, y1 continuous source coordinates into the model grid."""
        sy, sx = self.scale_yx
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.crop[1]) * sx + self.pad[1]
        b[:, [1, 3]] = (b[:, [1, 3]] - self.crop[0]) * sy + self.pad[0]
        return b

    # -- model -> source ------------------------------------------------------------------------
    def to_source(self, model_map: np.ndarray | torch.Tensor) -> np.ndarray:
        """Map a model-grid float map (S, S) back onto the full source grid (H, W), float32.

        Bilinear with ``align_corners=False`` on the content region is the exact inverse of the
        forward mapping (pixel centres ``x + 0.5`` scale by ``sx``); pixels outside the crop get 0.
        """
        arr = torch.as_tensor(model_map, dtype=torch.float32).detach().cpu()
        if arr.shape != (self.size, self.size):
            raise ValueError(f"expected a {self.size}x{self.size} map, got {tuple(arr.shape)}")
        content = arr[self.content]
        back = F.interpolate(content[None, None], size=self.crop_shape, mode="bilinear", align_corners=False)
        out = np.zeros(self.source_shape, dtype=np.float32)
        y0, x0, y1, x1 = self.crop
        out[y0:y1, x0:x1] = back[0, 0].numpy()
        return out

    def mask_to_source(self, model_prob: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
        """A model-grid probability (or 0/1) map to a boolean source-grid mask."""
        return self.to_source(model_prob) >= threshold

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) model-grid x0, y0, x1, y1 to continuous source coordinates, clipped to the image."""
        sy, sx = self.scale_yx
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad[1]) / sx + self.crop[1]
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad[0]) / sy + self.crop[0]
        h, w = self.source_shape
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        return b


@dataclass
class PreparedInput:
    """A network input (C, S, S) and the geometry that maps its outputs back to the source."""

    array: np.ndarray
    geometry: Letterbox
    # Pixels whose intensity statistics defined the normalisation (content, or lungs).
    reference: np.ndarray = field(repr=False)


def normalize_intensity(image: np.ndarray, reference: np.ndarray, method: Normalization) -> np.ndarray:
    """The one intensity normalisation: z-score over ``reference`` pixels, clipped to +-5 SD.

    ``unit`` leaves the [0, 1] presentation values as they are (YOLO, which scales 0-255 itself).
    ``equalize`` is histogram equalisation over the reference pixels: each pixel becomes its mid-rank
    among them, scaled to zero mean and unit variance (uniform on +-sqrt(3)). Any monotonic change of
    the grey scale (window, gamma, detector response curve: acquisition cues) leaves it unchanged.
    """
    if method == "unit":
        return image.astype(np.float32, copy=False)
    values = image[reference]
    if values.size == 0:
        raise EmptyLungMaskError("no reference pixel to normalise the intensity with")
    if method == "equalize":
        ordered = np.sort(values.astype(np.float64, copy=False))
        low = np.searchsorted(ordered, image, side="left")
        high = np.searchsorted(ordered, image, side="right")
        ranks = (low + high) / (2.0 * ordered.size)
        return ((ranks - 0.5) * np.sqrt(12.0)).astype(np.float32)
    mean = float(values.mean())
    std = max(float(values.std()), 1e-3)
    return np.clip((image - mean) / std, -ZSCORE_CLIP, ZSCORE_CLIP).astype(np.float32)


def lung_crop_box(lung_mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Bounding box (y0, x0, y1, x1) of the lungs grown by ``margin`` of its size, clipped."""
    rows = np.flatnonzero(lung_mask.any(axis=1))
    cols = np.flatnonzero(lung_mask.any(axis=0))
    if rows.size == 0:
        raise EmptyLungMaskError("lungs_only input needs a lung mask with at least one pixel")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    dy, dx = round((y1 - y0) * margin), round((x1 - x0) * margin)
    h, w = lung_mask.shape
    return max(0, y0 - dy), max(0, x0 - dx), min(h, y1 + dy), min(w, x1 + dx)


def prepare_input(pixels: np.ndarray, spec: InputSpec, lung_mask: np.ndarray | None = None) -> PreparedInput:
    """Build the network input for one image as the bundle's ``input`` block says.

    ``whole_image``: letterbox the whole image, z-score over the content, padding = ``outside_value``.
    ``lungs_only``: crop to the lung bounding box plus margin, replace non-lung pixels by the lung
    mean (before resizing, so nothing outside the lungs reaches the input), letterbox, z-score over
    lung pixels only, every non-lung pixel (and padding) = ``outside_value``. Training and inference both call
    this, so a lungs-only model never sees anything but lung parenchyma.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    if spec.mode == "lungs_only":
        if lung_mask is None:
            raise EmptyLungMaskError("lungs_only input mode needs the lung mask")
        if lung_mask.shape != pixels.shape:
            raise ValueError(f"lung mask {lung_mask.shape} does not match image {pixels.shape}")
        crop = lung_crop_box(lung_mask, spec.lung_margin)
        geometry = Letterbox.fit(pixels.shape, spec.size, crop, spec.resize)
        reference = geometry.mask_to_model(lung_mask)
        if not reference.any():
            raise EmptyLungMaskError("lung mask vanishes at the model's input size")
        # Blank the non-lung pixels at the source, before resizing, with the lungs' own mean: no
        # background value can then leak into a lung-edge pixel through the resize kernel.
        y0, x0, y1, x1 = geometry.crop
        crop_mask = lung_mask[y0:y1, x0:x1]
        source = np.zeros_like(pixels, dtype=np.float32)
        region = pixels[y0:y1, x0:x1]
        source[y0:y1, x0:x1] = np.where(crop_mask, region, region[crop_mask].mean())
    else:
        geometry = Letterbox.fit(pixels.shape, spec.size, None, spec.resize)
        reference = geometry.content_mask()
        source = pixels
    resized = geometry.image_to_model(source)
    normalised = normalize_intensity(resized, reference, spec.normalization)
    normalised[~reference] = spec.outside_value
    array = np.repeat(normalised[None], spec.channels, axis=0)
    return PreparedInput(array=array, geometry=geometry, reference=reference)


def prepare_yolo_image(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The YOLO input: letterboxed grey repeated to 3 channels, uint8 (H, W, 3), ultralytics' grey padding.

    ultralytics divides by 255 itself; training writes its images with this same function.
    """
    geometry = Letterbox.fit(pixels.shape, size)
    resized = geometry.image_to_model(np.clip(pixels, 0.0, 1.0), pad_value=YOLO_PAD_VALUE)
    grey = np.round(resized * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), geometry
