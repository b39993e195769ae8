"""The image-level GGO decision, "GGO present", made before any GGO is reported (specific first).

Why: the GGO U-Net marks about a third of a normal adult lung as ground glass, and the GGO detector boxes
a large share of normal NIH radiographs (both model cards). A reader forgives a missed faint opacity far
more easily than a false one on every normal film, so the pipeline first decides, per image, whether GGO is
present at all, and writes a GGO segment, boxes and an extent only when it is. When it is not, the result
says "GGO not detected" with the decision's score.

The decision is a logistic score over a few outputs the two GGO models already give (no new network):
the detector's highest box confidence (at a low confidence floor, so that an image without a box at the
operating threshold still has a graded value) and the segmentation's GGO probability inside the lung mask.
Its numbers belong to the two models they were measured on, like an operating threshold: the
ggo_segmentation bundle carries them as ``ggo_decision`` in its metadata (``pipelines/BUNDLES.md``), with the
sha256 of the detector weights they were fitted with; a pair of bundles that does not match is refused.
Fitted on the training split, operating point and mask threshold chosen on validation, by
``training/recipes/ggo_decision.py`` (figures in the GGO segmentation card).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.results import Box

# Features the rule may name; each is a number per image computed by :func:`decision_features`.
FEATURES = ("max_box_confidence", "lung_probability_mean", "lung_probability_p90", "lung_share_above_half")
_KEYS = {"features", "mean", "scale", "coefficients", "intercept", "threshold", "mask_threshold",
         "box_floor", "detector_sha256", "measured"}


@dataclass(frozen=True)
class GgoDecisionFeatures:
    """What the decision reads of one image (all in [0, 1])."""

    max_box_confidence: float  # highest detector confidence at/above the rule's floor; 0 without a box
    lung_probability_mean: float  # mean P(GGO) of the segmentation over the lung mask's pixels
    lung_probability_p90: float  # 90th percentile of P(GGO) over the lung mask's pixels
    lung_share_above_half: float  # share of lung pixels with P(GGO) >= 0.5

    def value(self, name: str) -> float:
        return float(getattr(self, name))

    def to_json(self) -> dict[str, float]:
        return {name: round(self.value(name), 6) for name in FEATURES}


def decision_features(boxes: Sequence[Box], probability_map: np.ndarray, lung_mask: np.ndarray
                      ) -> GgoDecisionFeatures:
    """The decision's inputs from the detector's boxes (any confidence) and the segmentation's map.

    An empty lung mask gives zeros for the segmentation features (the pipeline reports no GGO then).
    """
    lung = np.asarray(lung_mask, dtype=bool)
    inside = np.asarray(probability_map, dtype=np.float32)[lung]
    top = max((b.confidence for b in boxes), default=0.0)
    if inside.size == 0:
        return GgoDecisionFeatures(float(top), 0.0, 0.0, 0.0)
    return GgoDecisionFeatures(
        max_box_confidence=float(top),
        lung_probability_mean=float(inside.mean()),
        lung_probability_p90=float(np.percentile(inside, 90)),
        lung_share_above_half=float((inside >= 0.5).mean()),
    )


@dataclass(frozen=True)
class GgoDecisionRule:
    """score = sigmoid(intercept + sum_i coef_i * (feature_i - mean_i) / scale_i); present at >= threshold.

    ``mask_threshold`` is the pixel threshold of the GGO mask on images decided present (chosen on
    validation so that the extent stays calibrated against the radiologists' masks); ``box_floor`` the
    detector confidence down to which boxes are read for ``max_box_confidence``.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    threshold: float
    mask_threshold: float
    box_floor: float
    detector_sha256: str
    measured: str = ""

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0 or not all(len(v) == n for v in (self.mean, self.scale, self.coefficients)):
            raise ValueError("ggo_decision: features, mean, scale and coefficients need one value each")
        unknown = sorted(set(self.features) - set(FEATURES))
        if unknown:
            raise ValueError(f"ggo_decision: unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
        if any(not float(s) > 0.0 for s in self.scale):
            raise ValueError(f"ggo_decision: scale {list(self.scale)} must be > 0")
        for name in ("threshold", "mask_threshold", "box_floor"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"ggo_decision: {name} {getattr(self, name)!r} not in [0, 1]")
        if not self.detector_sha256:
            raise ValueError("ggo_decision: detector_sha256 (the detector it was fitted with) is required")

    @classmethod
    def from_metadata(cls, values: Mapping[str, Any]) -> GgoDecisionRule | None:
        """The rule a ggo_segmentation bundle's ``ggo_decision`` metadata names; None when it names none."""
        if not values:
            return None
        missing = sorted(_KEYS - {"measured"} - set(values))
        unknown = sorted(set(values) - _KEYS)
        if missing or unknown:
            raise ValueError(f"ggo_decision: missing keys {missing}, unknown keys {unknown}")
        return cls(
            features=tuple(str(f) for f in values["features"]),
            mean=tuple(float(v) for v in values["mean"]),
            scale=tuple(float(v) for v in values["scale"]),
            coefficients=tuple(float(v) for v in values["coefficients"]),
            intercept=float(values["intercept"]),
            threshold=float(values["threshold"]),
            mask_threshold=float(values["mask_threshold"]),
            box_floor=float(values["box_floor"]),
            detector_sha256=str(values["detector_sha256"]),
            measured=str(values.get("measured", "")),
        )

    def to_metadata(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "coefficients": list(self.coefficients), "intercept": self.intercept,
                "threshold": self.threshold, "mask_threshold": self.mask_threshold,
                "box_floor": self.box_floor, "detector_sha256": self.detector_sha256,
                "measured": self.measured}

    def describe(self) -> str:
        """What the score combines, in one phrase (SR algorithm parameters, ``--json``)."""
        return f"logistic score of {', '.join(self.features)}; GGO present at score >= {self.threshold:.4f}"

    def score(self, features: GgoDecisionFeatures) -> float:
        z = self.intercept + sum(
            c * (features.value(name) - m) / s
            for name, m, s, c in zip(self.features, self.mean, self.scale, self.coefficients, strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def present(self, score: float) -> bool:
        return score >= self.threshold
