"""Outlines for SR spatial coordinates (SCOORD, PS3.3 C.18.6) on the source image grid.

SCOORD image coordinates are (column, row) with (0, 0) at the top-left *corner* of the
top-left pixel (PS3.3 C.18.6.1.2), so pixel (r, c) covers [c, c+1) x [r, r+1) and its centre is
(c + 0.5, r + 0.5).
"""

from __future__ import annotations

import cv2
import numpy as np

# Polygon simplification tolerance in pixels (Douglas-Peucker): keeps an outline within a pixel
# of the mask border with a few dozen to a few hundred points.
TOLERANCE_PX = 1.0


def image_outline(rows: int, columns: int) -> np.ndarray:
    """The closed rectangle around the whole image (the region a whole-image model looked at)."""
    return np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=np.float32)


def mask_outlines(mask: np.ndarray, max_outlines: int = 4, min_fraction: float = 0.01) -> list[np.ndarray]:
    """Closed POLYLINEs around the largest connected regions of a boolean mask, largest first.

    Regions smaller than ``min_fraction`` of the largest one are left out (specks); holes are not
    outlined (outer borders only). Each outline runs through the centres of the region's border
    pixels (within half a pixel of the mask edge), simplified within TOLERANCE_PX. Returns [] for
    an empty mask. OpenCV traces the borders (Suzuki-Abe): a few ms on a 2446 x 2010 mask where
    skimage's marching squares took ~50 ms per mask.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return []
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # area of the region behind each border (pixels), so a one-pixel-wide line still counts
    sizes = [cv2.contourArea(c) + 0.5 * cv2.arcLength(c, True) + 1.0 for c in contours]
    largest = max(sizes)
    outlines: list[np.ndarray] = []
    for index in np.argsort(sizes)[::-1]:
        if sizes[index] < min_fraction * largest or len(outlines) >= max_outlines:
            break
        simplified = _simplify(contours[index])
        if len(simplified) >= 3:
            # pixel (x, y) index -> SCOORD of its centre (x + 0.5, y + 0.5), PS3.3 C.18.6.1.2
            points = np.clip(simplified + 0.5, 0.0, [mask.shape[1], mask.shape[0]])
        else:  # a dot or a line one or two pixels thick: the rectangle of its pixels' edges
            x, y, w, h = cv2.boundingRect(contours[index])
            points = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
        outlines.append(np.vstack([points, points[:1]]).astype(np.float32))
    return outlines


def _simplify(contour: np.ndarray) -> np.ndarray:
    """Douglas-Peucker with TOLERANCE_PX on a closed border (OpenCV), as (x, y) points."""
    points = np.ascontiguousarray(contour, dtype=np.int32).reshape(-1, 1, 2)
    return cv2.approxPolyDP(points, TOLERANCE_PX, True).reshape(-1, 2).astype(np.float64)
