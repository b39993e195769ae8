"""Task 4, ground-glass opacity: YOLO boxes with confidences, a MONAI segmentation mask, and extent.

Detection runs ultralytics on our own letterboxed image (:func:`pipelines.preprocess.prepare_yolo_image`,
the same one training writes), so ultralytics' internal letterbox is a no-op and the boxes it returns
are in our model grid; :meth:`Letterbox.boxes_to_source` maps them to source pixels. Boxes below the
bundle's operating threshold (minimum confidence) are dropped by ultralytics itself.

Extent = GGO area inside the lungs / lung area x 100 (None when the lung mask is empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.bundle import LoadedBundle
from pipelines.preprocess import prepare_input, prepare_yolo_image
from pipelines.results import Box, SourceImage
from pipelines.runtime import foreground_probability, inference, stack

# Keep SR documents readable: a chest X-ray with more GGO boxes than this is reported by extent.
MAX_BOXES = 50
NMS_IOU = 0.5


def ggo_extent_percent(ggo_mask: np.ndarray, lung_mask: np.ndarray) -> float | None:
    lung_px = int(lung_mask.sum())
    if lung_px == 0:
        return None
    return 100.0 * float(np.logical_and(ggo_mask, lung_mask).sum()) / lung_px


class GgoDetector:
    def __init__(self, bundle: LoadedBundle) -> None:
        self.bundle = bundle
        self.size = bundle.metadata.input.size
        self.threshold = float(bundle.metadata.operating_threshold)
        self.half = bundle.device.startswith("cuda")

    def predict(self, images: Sequence[SourceImage], min_confidence: float | None = None) -> list[list[Box]]:
        """Boxes per image, highest confidence first, down to ``min_confidence`` (default: the bundle's
        operating threshold; the GGO decision reads them down to its own lower floor)."""
        if not images:
            return []
        conf = self.threshold if min_confidence is None else float(min_confidence)
        prepared = [prepare_yolo_image(im.pixels, self.size) for im in images]
        outputs = self.bundle.network.predict(
            [arr for arr, _ in prepared], imgsz=self.size, conf=conf, iou=NMS_IOU,
            max_det=MAX_BOXES, device=self.bundle.device, half=self.half, verbose=False, save=False,
        )
        results: list[list[Box]] = []
        for (_, geometry), out in zip(prepared, outputs, strict=True):
            xyxy = out.boxes.xyxy.float().cpu().numpy()
            conf = out.boxes.conf.float().cpu().numpy()
            boxes = []
            for (x0, y0, x1, y1), c in zip(geometry.boxes_to_source(xyxy), conf, strict=True):
                if x1 > x0 and y1 > y0:  # a box wholly in the padding collapses to nothing
                    boxes.append(Box(float(x0), float(y0), float(x1), float(y1), float(c)))
            results.append(sorted(boxes, key=lambda b: -b.confidence))
        return results


def ggo_mask_in_lungs(probability_map: np.ndarray, lung_mask: np.ndarray, threshold: float) -> np.ndarray:
    """The reported GGO mask: P(GGO) at/above ``threshold`` and inside the lungs (GGO is a lung finding)."""
    return np.logical_and(probability_map >= threshold, lung_mask)


class GgoSegmenter:
    def __init__(self, bundle: LoadedBundle) -> None:
        self.bundle = bundle
        self.spec = bundle.metadata.input
        self.threshold = float(bundle.metadata.operating_threshold)

    @property
    def needs_lungs(self) -> bool:
        return self.spec.mode == "lungs_only"

    def predict(
        self, images: Sequence[SourceImage], lung_masks: Sequence[np.ndarray | None]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(boolean mask, float32 probability map) per image, both on the source grid."""
        if not images:
            return []
        prepared = [prepare_input(im.pixels, self.spec, m) for im, m in zip(images, lung_masks, strict=True)]
        batch = stack([p.array for p in prepared], self.bundle.device)
        with inference(self.bundle.device):
            probs = foreground_probability(self.bundle.network(batch)).cpu()
        out = []
        for prep, prob in zip(prepared, probs, strict=True):
            prob_map = np.clip(prep.geometry.to_source(prob), 0.0, 1.0)
            out.append((prob_map >= self.threshold, prob_map))
        return out
