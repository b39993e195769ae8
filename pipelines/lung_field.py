"""A second witness of the projection that never saw a lateral: the shape of the lung mask.

Why: every lateral the projection model learnt from comes from one collection (ieee8023), so a lateral
from another hospital may be called frontal, and a PNG or a header without View Position gives no other
clue. The lung model was trained on frontal images only, yet what it draws on a lateral has a shape no
frontal gives: one lung field spanning the chest from sternum to spine (for the shipped lung model: at
least 45 % of the image's width), with any second component small beside it. A frontal shows two lungs
either side of the mediastinum, each well under half the width; when one lung is white (effusion,
collapse, pneumonectomy) the other is still only one side of the chest.

The rule's two numbers belong to the lung model whose masks they were measured on, like an operating
threshold: a lungs bundle carries them as ``lateral_field`` in its metadata (``pipelines/BUNDLES.md``),
and a lungs bundle without them gets no such check. Measured for the shipped lungs bundle with
``training/recipes/lung_field_check.py`` (figures in the projection model card).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_GRID_PX = 512


@dataclass(frozen=True)
class LungFieldShape:
    """Largest lung component's width (share of the image's); next component's area (share of the largest)."""

    largest_width: float
    second_to_largest: float

    def describe(self) -> str:
        return (f"the lung mask is one field {self.largest_width:.0%} of the image wide, the next part "
                f"{self.second_to_largest:.0%} of its area")


@dataclass(frozen=True)
class LateralFieldRule:
    """Lateral-shaped: one field at least ``min_width`` of the image wide, the next under ``max_second``.

    Its numbers come from one lung model's masks (a lungs bundle's ``lateral_field``).
    """

    min_width: float
    max_second: float

    def __post_init__(self) -> None:
        for name in ("min_width", "max_second"):
            value = getattr(self, name)
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"lateral_field {name} {value!r} not in (0, 1]")

    @classmethod
    def from_metadata(cls, values: Mapping[str, Any]) -> LateralFieldRule | None:
        """The rule a lungs bundle's ``lateral_field`` metadata names; None when it names none."""
        if not values:
            return None
        unknown = sorted(set(values) - {"min_width", "max_second", "measured"})
        if unknown or not {"min_width", "max_second"} <= set(values):
            raise ValueError(f"lateral_field needs min_width and max_second (and may say what was measured), "
                             f"got {sorted(values)}")
        return cls(min_width=float(values["min_width"]), max_second=float(values["max_second"]))

    def matches(self, shape: LungFieldShape) -> bool:
        return shape.largest_width >= self.min_width and shape.second_to_largest < self.max_second


def lung_field_shape(mask: np.ndarray) -> LungFieldShape | None:
    """The shape of a boolean lung mask on the source grid; None when the mask is empty.

    Read on every ``step``-th pixel so that the longer side is at most ``_GRID_PX`` (both figures are
    shares, so the grid does not change them beyond a pixel's rounding; a full-size CR mask costs ~70 ms).
    """
    mask = np.asarray(mask, dtype=bool)
    step = max(1, -(-max(mask.shape) // _GRID_PX))
    labels, count = ndimage.label(mask[::step, ::step], structure=_EIGHT_CONNECTED)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    columns = np.flatnonzero((labels == order[0] + 1).any(axis=0))
    width = (int(columns[-1]) - int(columns[0]) + 1) / labels.shape[1]
    second = float(sizes[order[1]] / sizes[order[0]]) if count > 1 else 0.0
    return LungFieldShape(largest_width=float(width), second_to_largest=second)
