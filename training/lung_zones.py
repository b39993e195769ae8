"""The six Brixia lung zones of a frontal chest radiograph, drawn from a lung mask.

Why: the Brixia score (Borghesi & Maroldi 2020) grades each of six zones 0-3, so a zone scored 0 by two
radiologists is a piece of lung known to be clear INSIDE a COVID-19 picture. That is the one negative these
data hold that no collection, hospital or device can explain: the clear zone and the diseased zones share
the picture. ``training.recipes.ggo_zone_check`` scores GGO models on it.

The published zones are cut by anatomical lines (the inferior wall of the aortic arch and of the right
inferior pulmonary vein), which a lung mask does not show. Here each lung is cut into thirds of its own
height instead: an approximation, the same for every model it compares. Zones: A, B, C = the patient's
right lung (the image's left in the usual display), upper to lower; D, E, F = the left lung.
"""

from __future__ import annotations

import numpy as np

ZONES = "ABCDEF"


def split_lungs(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image-left lung, image-right lung) of a boolean mask, cut at the emptiest column of its middle.

    A cut column instead of connected components: a predicted mask may join the lungs, or break one
    lung in two.
    """
    lung = np.asarray(lung, dtype=bool)
    cols = np.flatnonzero(lung.any(axis=0))
    if cols.size == 0:
        raise ValueError("empty lung mask")
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    width = x1 - x0
    lo, hi = x0 + int(0.3 * width), x0 + max(int(0.7 * width), int(0.3 * width) + 1)
    counts = lung[:, lo:hi].sum(axis=0)
    emptiest = np.flatnonzero(counts == counts.min())
    cut = lo + int(emptiest[emptiest.size // 2])
    left, right = lung.copy(), lung.copy()
    left[:, cut:] = False
    right[:, :cut] = False
    return left, right


def brixia_zones(lung: np.ndarray) -> np.ndarray:
    """uint8 label map: 0 outside the lungs, 1..6 = zones A..F (``ZONES[label - 1]``)."""
    labels = np.zeros(np.shape(lung), dtype=np.uint8)
    for side, part in enumerate(split_lungs(lung)):
        rows = np.flatnonzero(part.any(axis=1))
        if rows.size == 0:
            continue
        top, height = int(rows[0]), int(rows[-1]) + 1 - int(rows[0])
        edges = [top + round(height * k / 3) for k in range(4)]
        for level in range(3):
            band = np.zeros_like(part)
            band[edges[level] : edges[level + 1]] = True
            labels[part & band] = 1 + 3 * side + level
    return labels
