"""Outlines for SR spatial coordinates (SCOORD, PS3.3 C.18.6) on the source image grid.

SCOORD image coordinates are (column, row) with (0, 0) at the top-left *corner* of the
top-left pixel (PS3.3 C.18.6.1.2), so pixel (r, c) covers [c, c+1) x [r, r+1) and its centre is
(c + 0.5, r + 0.5).
"""

from __future__ import annotations

import numpy as np
from skimage import measure

# Polygon simplification tolerance in pixels (Douglas-Peucker): keeps an outline within a pixel
# of the mask border with a few dozen to a few hundred points.
TOLERANCE_PX = 1.0


def image_outline(rows: int, columns: int) -> np.ndarray:
    """The closed rectangle around the whole image (the region a whole-image model looked at)."""
    return np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=np.float32)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def mask_outlines(mask: np.ndarray, max_outlines: int = 4, min_fraction: float = 0.01) -> list[np.ndarray]:
    """Closed POLYLINEs around the largest connected regions of a boolean mask, largest first.

    Regions smaller than ``min_fraction`` of the largest one are left out (specks); holes are not
    outlined. Returns [] for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float32)
    outlines = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        simplified = measure.approximate_polygon(contour, tolerance=TOLERANCE_PX)
        # (row, col) in the padded index space -> (x, y) SCOORD: -1 for the pad, +0.5 for centres.
        points = np.stack([simplified[:, 1] - 0.5, simplified[:, 0] - 0.5], axis=1)
        points = np.clip(points, 0.0, [mask.shape[1], mask.shape[0]])
        if not np.array_equal(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
        if len(points) >= 4:
            outlines.append(points.astype(np.float32))
    outlines.sort(key=_polygon_area, reverse=True)
    if not outlines:
        return []
    largest = _polygon_area(outlines[0])
    # Holes are traced too; a hole lies inside a larger outline and has no positive pixel at its
    # centroid: drop outlines whose interior is mostly background.
    kept = [o for o in outlines if _polygon_area(o) >= min_fraction * largest and _mostly_inside(o, mask)]
    return kept[:max_outlines]


def _mostly_inside(outline: np.ndarray, mask: np.ndarray) -> bool:
    """True when most mask pixels within the outline's bounding box are set (not a hole)."""
    x0, y0 = np.floor(outline.min(axis=0)).astype(int)
    x1, y1 = np.ceil(outline.max(axis=0)).astype(int)
    window = mask[max(0, y0):y1, max(0, x0):x1]
    if window.size == 0:
        return False
    path_area = _polygon_area(outline)
    return float(window.sum()) >= 0.5 * path_area
