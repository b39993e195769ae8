"""Task 2, lungs: a binary lung mask at source resolution, post-processed, with its area.

Post-processing (at the source grid, so that what the SEG stores is what was measured): keep the two
largest 8-connected components (two lungs; specks and stray foreground elsewhere go), then fill holes
(vessels and nodules mis-called as background inside a lung). Area in pixels always, in mm² when
the image has a pixel spacing (whose source is reported with it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pipelines.bundle import LoadedBundle
from pipelines.preprocess import prepare_input
from pipelines.results import LungResult, SourceImage
from pipelines.runtime import foreground_probability, inference, stack

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def keep_largest_components(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """The ``count`` largest 8-connected components of a boolean mask."""
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n <= count:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes)[::-1][:count]
    return np.isin(labels, keep)


def postprocess_lung_mask(mask: np.ndarray) -> np.ndarray:
    """Two largest components, holes filled (each lung separately would be the same: they are disjoint)."""
    return ndimage.binary_fill_holes(keep_largest_components(mask, 2))


class LungSegmenter:
    def __init__(self, bundle: LoadedBundle) -> None:
        self.bundle = bundle
        self.spec = bundle.metadata.input
        self.threshold = float(bundle.metadata.operating_threshold)

    def predict(self, images: Sequence[SourceImage]) -> list[LungResult]:
        if not images:
            return []
        prepared = [prepare_input(im.pixels, self.spec) for im in images]
        batch = stack([p.array for p in prepared], self.bundle.device)
        with inference(self.bundle.device):
            probs = foreground_probability(self.bundle.network(batch)).cpu()
        results = []
        for image, prep, prob in zip(images, prepared, probs, strict=True):
            mask = postprocess_lung_mask(prep.geometry.mask_to_source(prob, self.threshold))
            area_px = int(mask.sum())
            spacing = image.spacing
            results.append(LungResult(
                mask=mask,
                area_px=area_px,
                area_mm2=None if spacing is None else area_px * spacing.pixel_area_mm2,
                spacing_source=None if spacing is None else spacing.source,
                model=self.bundle.info,
            ))
        return results
