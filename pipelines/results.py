"""Plain typed results of the chest X-ray pipeline.

These dataclasses are the only thing the DICOM side (``node``) sees of the AI side: the
result writers turn them into SEG, SR and secondary-capture objects, ``cxr-node analyze``
prints them as JSON. Every array is on the *source image's own pixel grid* (rows x columns
of the DICOM Pixel Data), because the SEG, the SR's SCOORDs and the secondary capture all
refer to that grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class SpacingSource(StrEnum):
    """Which DICOM attribute a pixel spacing came from (PS3.3 C.8.11.7 and C.7.6.2).

    On projection radiographs ``ImagerPixelSpacing`` is measured at the detector, not in the
    patient: a measurement must say which one it used.
    """

    PIXEL_SPACING = "PixelSpacing"
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"
    IMAGER_PIXEL_SPACING_CORRECTED = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"


@dataclass(frozen=True)
class PixelSpacing:
    """Physical size of one pixel in mm: (row spacing, column spacing) as DICOM orders them."""

    row_mm: float
    column_mm: float
    source: SpacingSource

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.column_mm


@dataclass
class SourceImage:
    """A chest radiograph ready for the models.

    ``pixels`` is float32 in [0, 1], shape (rows, columns), in *presentation* polarity:
    bone and soft tissue bright, air (lungs) dark, whatever the Photometric Interpretation
    was (MONOCHROME1 is inverted on load).
    """

    pixels: np.ndarray
    path: str
    spacing: PixelSpacing | None = None
    sop_instance_uid: str | None = None
    # The pydicom Dataset the image came from (None for PNG/JPEG); kept so that the result
    # writers can reference it without reading the file again.
    dataset: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model bundle that produced a value (goes into SEG/SR algorithm ids)."""

    name: str
    version: str
    task: str
    architecture: str
    # The bundle's reader_caution: a known failure mode the result objects repeat beside its values.
    caution: str = ""


class Projection(StrEnum):
    FRONTAL = "frontal"
    LATERAL = "lateral"


@dataclass
class ProjectionResult:
    projection: Projection
    # Probability of the returned projection (>= 0.5 by construction).
    probability: float
    model: ModelInfo
    # The DICOM header's View Position (0018,5101) as written (None: absent, empty or not DICOM).
    view_position: str | None = None


@dataclass
class LungResult:
    mask: np.ndarray  # bool, source grid
    area_px: int
    area_mm2: float | None  # None when the image has no pixel spacing
    spacing_source: SpacingSource | None
    model: ModelInfo


@dataclass
class CovidResult:
    probability: float
    positive: bool
    threshold: float
    input_mode: str  # "whole_image" or "lungs_only"
    heatmap: np.ndarray  # float32 in [0, 1], source grid (Grad-CAM)
    model: ModelInfo
    # Lungs-only input: the lung mask that cut it (source grid), and the lung model that made it when
    # that is the covid bundle's own (input_lungs/) rather than the pipeline's lungs model.
    input_mask: np.ndarray | None = None
    input_lung_model: ModelInfo | None = None


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in source pixel coordinates (x to the right, y down; x1/y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float

    def to_json(self) -> dict[str, float]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "confidence": self.confidence}


@dataclass(frozen=True)
class GgoDecision:
    """The image-level "GGO present" decision (``pipelines.tasks.ggo_decision``), made before any GGO is
    reported. ``score`` is its logistic score in [0, 1]; GGO is present at or above ``threshold``.
    """

    present: bool
    score: float
    threshold: float
    features: dict[str, float]
    # One phrase naming what the score combines, for the SR and --json.
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"present": self.present, "score": round(self.score, 6), "threshold": round(self.threshold, 6),
                "features": dict(self.features), "method": self.method}


@dataclass
class GgoResult:
    """GGO of one image. With a decision that says absent nothing is reported: no boxes, an all-False
    mask, no probability map, no extent (specific first: no GGO segment in the SEG, "not detected" in the SR).
    """

    boxes: list[Box]
    mask: np.ndarray  # bool, source grid; inside the lungs when the decision says present
    probability_map: np.ndarray | None  # float32 in [0, 1], source grid; for a FRACTIONAL SEG
    # GGO area inside the lungs / lung area, in percent; None when the lung mask is empty or GGO is absent.
    extent_percent: float | None
    detection_model: ModelInfo
    segmentation_model: ModelInfo
    # None: the GGO bundle carries no decision, GGO is reported unchecked (the result warns).
    decision: GgoDecision | None = None

    @property
    def detected(self) -> bool:
        """GGO is reported: the decision says present, or there is no decision."""
        return self.decision is None or self.decision.present


@dataclass
class ChestResult:
    """Everything the pipeline found in one image.

    ``analysed`` is False for a lateral image (the chain stops after projection) and
    ``not_analysed_reason`` says why; lungs/covid/ggo are then None.
    """

    source: str
    sop_instance_uid: str | None
    image_shape: tuple[int, int]
    spacing: PixelSpacing | None
    projection: ProjectionResult
    analysed: bool
    not_analysed_reason: str | None = None
    lungs: LungResult | None = None
    covid: CovidResult | None = None
    ggo: GgoResult | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Stages skipped for this image and why (e.g. lungs-only COVID input with an empty lung mask).
    warnings: list[str] = field(default_factory=list)

    @property
    def models(self) -> dict[str, ModelInfo]:
        found: list[ModelInfo] = [self.projection.model]
        if self.lungs is not None:
            found.append(self.lungs.model)
        if self.covid is not None:
            found.append(self.covid.model)
            if self.covid.input_lung_model is not None:
                found.append(self.covid.input_lung_model)
        if self.ggo is not None:
            found += [self.ggo.detection_model, self.ggo.segmentation_model]
        return {m.name: m for m in found}

    def to_json(self, outputs: list[str] | None = None) -> dict[str, Any]:
        """The one-line JSON record of ``cxr-node analyze --json``."""
        return {
            "source": self.source,
            "sop_instance_uid": self.sop_instance_uid,
            "projection": self.projection.projection.value,
            "projection_probability": round(self.projection.probability, 6),
            "view_position": self.projection.view_position,
            "analysed": self.analysed,
            "not_analysed_reason": self.not_analysed_reason,
            "covid_probability": None if self.covid is None else round(self.covid.probability, 6),
            "covid_positive": None if self.covid is None else self.covid.positive,
            "covid_threshold": None if self.covid is None else self.covid.threshold,
            "lung_area_px": None if self.lungs is None else self.lungs.area_px,
            "lung_area_mm2": None if self.lungs is None or self.lungs.area_mm2 is None
            else round(self.lungs.area_mm2, 2),
            "spacing_source": None if self.spacing is None else self.spacing.source.value,
            "ggo_extent_percent": None if self.ggo is None or self.ggo.extent_percent is None
            else round(self.ggo.extent_percent, 3),
            "ggo_boxes": [] if self.ggo is None else [b.to_json() for b in self.ggo.boxes],
            # True / False: GGO reported / not detected; None: not assessed (stage skipped, not analysed).
            "ggo_detected": None if self.ggo is None else self.ggo.detected,
            "ggo_decision": None if self.ggo is None or self.ggo.decision is None
            else self.ggo.decision.to_json(),
            "models": {name: m.version for name, m in self.models.items()},
            "model_cautions": {name: m.caution for name, m in self.models.items() if m.caution},
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "warnings": list(self.warnings),
            "outputs": list(outputs or []),
        }
