"""Task 5, the chest pipeline: projection -> lungs -> COVID-19 (+ Grad-CAM) -> GGO, one result per image.

Every bundle is loaded once, when the pipeline is built (a worker builds one per process). A lateral
image stops after projection (``analysed=False`` with the reason): lateral by the projection model,
or by a DICOM View Position of LL/RL (``use_view_position``; a disagreement either way is a warning).
A frontal call is checked once more after the lungs stage: a lung mask with the shape a lateral gives
(``pipelines.lung_field``: one field across the chest, by the rule the lungs bundle carries) stops the
chain too (``use_lung_field``; off: a warning only).
An image whose Body Part Examined names a region without lungs (``pipelines.body_part``) is not
analysed either (``use_body_part``), nor is an image too small or too elongated to be a chest radiograph
(:func:`unfit_geometry`: a thumbnail or a strip would be upsampled into the models' grids and read as lungs).
GGO is reported specific first: a GGO segmentation bundle that carries an image-level decision
(``pipelines.tasks.ggo_decision``) gets its boxes, mask and extent reported only on an image the decision
calls present; otherwise the result says GGO not detected, with the decision's score.
A covid bundle that names ``min_patient_age_years`` gives no COVID-19 output for a patient whose
DICOM header says younger (``pipelines.population``); a warning says why and every other finding
stays. Per-stage wall times are in ``ChestResult.timings_ms``; in :meth:`ChestPipeline.analyze_batch`
a stage runs once for the whole batch, and each image gets the batch's stage time divided by the
number of images in that stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from pipelines.body_part import non_chest_body_part
from pipelines.bundle import BundleRegistry, LoadedBundle
from pipelines.errors import BundleError
from pipelines.lung_field import LateralFieldRule, lung_field_shape
from pipelines.population import below_minimum_age, describe_age
from pipelines.results import (
    Box,
    ChestResult,
    CovidResult,
    GgoDecision,
    GgoResult,
    LungResult,
    Projection,
    ProjectionResult,
    SourceImage,
)
from pipelines.runtime import chunks, resolve_device
from pipelines.tasks.covid import CovidClassifier
from pipelines.tasks.ggo import GgoDetector, GgoSegmenter, ggo_extent_percent, ggo_mask_in_lungs
from pipelines.tasks.ggo_decision import GgoDecisionRule, decision_features
from pipelines.tasks.lungs import LungSegmenter
from pipelines.tasks.projection import ProjectionClassifier, header_projection

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

LATERAL_REASON = "lateral projection: the lung, COVID-19 and GGO models read frontal (PA/AP) images only"
HEADER_LATERAL_REASON = ("lateral projection by the DICOM header (View Position {view}), although the "
                         "projection model called it frontal (P={p:.2f}): the lung, COVID-19 and GGO models "
                         "read frontal (PA/AP) images only")
# A chest radiograph is hundreds to thousands of pixels on a side and roughly square (portrait or landscape);
# the models read 128-256 px grids. Below MIN_SIDE_PX the models would see upsampled blur; beyond
# MAX_ASPECT the picture is a strip, not a chest.
MIN_SIDE_PX = 128
MAX_ASPECT = 3.0
GEOMETRY_REASON = ("image {rows}x{columns} px is not the shape of a chest radiograph (shorter side at least "
                   f"{MIN_SIDE_PX} px, sides at most {MAX_ASPECT:g}:1)")
LUNG_FIELD_REASON = ("lateral projection by the shape of the lung mask ({shape}, as on a lateral view), "
                     "although the projection model called it frontal (P={p:.2f}): the lung, COVID-19 and "
                     "GGO models read frontal (PA/AP) images only")
BODY_PART_REASON = ("not a chest radiograph by the DICOM header (Body Part Examined {part}): the lung, "
                    "COVID-19 and GGO models read chest radiographs only")
STAGES = ("projection", "lungs", "covid", "ggo_detection", "ggo_segmentation")


def unfit_geometry(shape: tuple[int, int]) -> str | None:
    """Why an image of this (rows, columns) is not analysed, or None when its shape can be a chest film."""
    rows, columns = shape
    if min(rows, columns) < MIN_SIDE_PX or max(rows, columns) > MAX_ASPECT * min(rows, columns):
        return GEOMETRY_REASON.format(rows=rows, columns=columns)
    return None


def _same_model(a: LoadedBundle, b: LoadedBundle) -> bool:
    """Same weights, input and threshold: the masks would be identical, so one pass serves both."""
    return (a.metadata.weights.get("sha256") == b.metadata.weights.get("sha256")
            and a.metadata.input == b.metadata.input
            and a.metadata.operating_threshold == b.metadata.operating_threshold)


@dataclass
class _Timer:
    totals: dict[str, float]

    def run(self, stage: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.totals[stage] = self.totals.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


class ChestPipeline:
    """The five models, loaded once; :meth:`analyze` / :meth:`analyze_batch` per image."""

    def __init__(
        self,
        projection: ProjectionClassifier,
        lungs: LungSegmenter,
        covid: CovidClassifier,
        ggo_detection: GgoDetector,
        ggo_segmentation: GgoSegmenter,
        device: str,
        batch_size: int = 16,
        use_view_position: bool = True,
        use_body_part: bool = True,
        use_lung_field: bool = True,
    ) -> None:
        self.projection = projection
        self.lungs = lungs
        self.covid = covid
        self.ggo_detection = ggo_detection
        self.ggo_segmentation = ggo_segmentation
        self.device = device
        self.batch_size = batch_size
        # A header that says lateral stops the chain too (pipelines.tasks.projection says why).
        self.use_view_position = use_view_position
        self.use_body_part = use_body_part
        # A lung mask shaped like a lateral's stops the chain (pipelines.lung_field); off: a warning only.
        self.use_lung_field = use_lung_field
        self._lateral_field = LateralFieldRule.from_metadata(lungs.bundle.metadata.lateral_field)
        # The image-level GGO decision (pipelines.tasks.ggo_decision) was fitted on one detector's scores.
        self._ggo_rule = GgoDecisionRule.from_metadata(ggo_segmentation.bundle.metadata.ggo_decision)
        detector_sha = ggo_detection.bundle.metadata.weights.get("sha256")
        if self._ggo_rule is not None and self._ggo_rule.detector_sha256 != detector_sha:
            raise BundleError(
                f"{ggo_segmentation.bundle.path}: its ggo_decision was fitted with the GGO detector whose "
                f"weights have sha256 {self._ggo_rule.detector_sha256[:12]}..., not with "
                f"{ggo_detection.bundle.path} ({str(detector_sha)[:12]}...); refit it "
                "(training.recipes.ggo_decision --write-metadata)")
        # The COVID model's own lung model (the one it was trained with) cuts its input, unless it is
        # the pipeline's lung model: then the lungs stage's masks serve both. Decided once, here.
        own = covid.input_lungs
        self._covid_lungs = (own if covid.needs_lungs and own is not None
                             and not _same_model(own.bundle, lungs.bundle) else None)
        # Grad-CAM hooks and the logits hook keep per-call state on the networks: one call at a time
        # (the node's worker threads share one pipeline; torch already uses every core per call).
        self._lock = threading.Lock()

    @classmethod
    def from_models_dir(
        cls,
        models_dir: Path | str,
        device: str | None = None,
        *,
        state_dir: Path | str | None = None,
        preferred: Mapping[str, str] | None = None,
        batch_size: int = 16,
        use_view_position: bool = True,
        use_body_part: bool = True,
        use_lung_field: bool = True,
    ) -> ChestPipeline:
        """Load one bundle per task from ``models_dir`` (raises BundleError naming what is missing)."""
        device = resolve_device(device)
        registry = BundleRegistry(models_dir, preferred=preferred)
        missing = registry.missing_tasks()
        if missing:
            problems = "; ".join(f"{p}: {e}" for p, e in registry.problems.items())
            raise BundleError(f"{models_dir}: no bundle for task(s) {', '.join(missing)}"
                              + (f" (unreadable: {problems})" if problems else ""))
        return cls(
            projection=ProjectionClassifier(registry.load("projection", device)),
            lungs=LungSegmenter(registry.load("lungs", device)),
            covid=CovidClassifier(registry.load("covid", device)),
            ggo_detection=GgoDetector(registry.load("ggo_detection", device, state_dir=state_dir)),
            ggo_segmentation=GgoSegmenter(registry.load("ggo_segmentation", device)),
            device=device,
            batch_size=batch_size,
            use_view_position=use_view_position,
            use_body_part=use_body_part,
            use_lung_field=use_lung_field,
        )

    def analyze(self, image: SourceImage) -> ChestResult:
        return self._analyze_chunk([image])[0]

    def analyze_batch(self, images: Sequence[SourceImage]) -> list[ChestResult]:
        """Analyse many images, ``batch_size`` at a time per model."""
        results: list[ChestResult] = []
        for part in chunks(len(images), self.batch_size):
            results += self._analyze_chunk(list(images[part]))
        return results

    def _analyze_chunk(self, images: list[SourceImage]) -> list[ChestResult]:
        if not images:
            return []
        with self._lock:
            return self._analyze_locked(images)

    def _projection_decision(self, image: SourceImage, proj: ProjectionResult) -> ChestResult:
        """Analysed only when the model says frontal and the header (if it names a view) does not say lateral.

        A disagreement is a warning in the result (and so in the SR), whichever way it goes.
        """
        header = header_projection(image.dataset)
        proj.view_position, said = header if header else (None, None)
        frontal = proj.projection is Projection.FRONTAL
        result = ChestResult(
            source=image.path, sop_instance_uid=image.sop_instance_uid, image_shape=image.shape,
            spacing=image.spacing, projection=proj, analysed=frontal,
            not_analysed_reason=None if frontal else LATERAL_REASON)
        if said is None or said is proj.projection:
            return result
        disagreement = (f"projection: the DICOM View Position {proj.view_position} says {said.value}, the "
                        f"projection model {proj.projection.value} (P={proj.probability:.2f})")
        if not self.use_view_position:
            result.warnings.append(f"{disagreement}; the model's call was used (View Position check off)")
            return result
        if frontal:
            result.analysed = False
            result.not_analysed_reason = HEADER_LATERAL_REASON.format(view=proj.view_position,
                                                                      p=proj.probability)
        result.warnings.append(f"{disagreement}; not analysed")
        return result

    def _analyze_locked(self, images: list[SourceImage]) -> list[ChestResult]:
        start = time.perf_counter()
        timer = _Timer({})
        projections = timer.run("projection", self.projection.predict, images)
        results = [self._projection_decision(im, proj) for im, proj in zip(images, projections, strict=True)]
        for im, result in zip(images, results, strict=True):
            part = non_chest_body_part(im.dataset) if self.use_body_part else None
            reason = BODY_PART_REASON.format(part=part) if part is not None else unfit_geometry(im.shape)
            if reason is not None:
                result.analysed = False
                result.not_analysed_reason = reason
        frontal = [i for i, r in enumerate(results) if r.analysed]
        counts = {"projection": len(images)}
        if frontal:
            lungs: list[LungResult] = timer.run("lungs", self.lungs.predict, [images[i] for i in frontal])
            counts["lungs"] = len(frontal)
            by_index = dict(zip(frontal, lungs, strict=True))
            for i in frontal:
                self._lung_field_decision(results[i], by_index[i])
            frontal = [i for i in frontal if results[i].analysed]
            if frontal:
                f_images, f_lungs = [images[i] for i in frontal], [by_index[i] for i in frontal]
                self._covid(timer, f_images, f_lungs, [results[i] for i in frontal])
                self._ggo(timer, f_images, f_lungs, [results[i] for i in frontal])
                for i in frontal:
                    results[i].lungs = by_index[i]
                counts.update({stage: len(frontal) for stage in STAGES[2:]})
        total = (time.perf_counter() - start) * 1000.0
        for r in results:
            per_stage = {s: timer.totals[s] / counts[s] for s in STAGES if s in timer.totals and r.analysed}
            per_stage["projection"] = timer.totals["projection"] / counts["projection"]
            r.timings_ms = {**per_stage, "total": total / len(images)}
        return results

    def _lung_field_decision(self, result: ChestResult, lung: LungResult) -> None:
        """A frontal call whose lung mask has a lateral's shape: not analysed (check off: a warning)."""
        if self._lateral_field is None:
            return
        shape = lung_field_shape(lung.mask)
        if shape is None or not self._lateral_field.matches(shape):
            return
        p = result.projection.probability
        said = (f"projection: {shape.describe()}, the shape of a lateral view; the projection model said "
                f"frontal (P={p:.2f})")
        if not self.use_lung_field:
            result.warnings.append(f"{said}; analysed as frontal (lung-field check off)")
            return
        result.analysed = False
        result.not_analysed_reason = LUNG_FIELD_REASON.format(shape=shape.describe(), p=p)
        result.warnings.append(f"{said}; not analysed")

    def _covid(self, timer: _Timer, images: list[SourceImage], lungs: list[LungResult],
               results: list[ChestResult]) -> None:
        minimum = float(self.covid.bundle.metadata.min_patient_age_years)
        eligible = []
        for i, image in enumerate(images):
            age = below_minimum_age(image.dataset, minimum)
            if age is None:
                eligible.append(i)
            else:
                results[i].warnings.append(
                    f"covid: not assessed, the patient's age in the DICOM header ({describe_age(age)}) is "
                    f"below the COVID-19 model's intended population (patients aged {minimum:g} years or "
                    "more; see its model card)")
        if not eligible:
            return
        images, lungs, results = ([images[i] for i in eligible], [lungs[i] for i in eligible],
                                  [results[i] for i in eligible])
        if self._covid_lungs is not None:
            lungs = timer.run("covid", self._covid_lungs.predict, images)
        usable = [i for i, lung in enumerate(lungs) if lung.area_px > 0 or not self.covid.needs_lungs]
        for i in set(range(len(images))) - set(usable):
            results[i].warnings.append("covid: skipped, lungs-only input needs a lung mask; none found")
        covid: list[CovidResult] = timer.run(
            "covid", self.covid.predict, [images[i] for i in usable], [lungs[i].mask for i in usable])
        for i, value in zip(usable, covid, strict=True):
            results[i].covid = value

    def _ggo(self, timer: _Timer, images: list[SourceImage], lungs: list[LungResult],
             results: list[ChestResult]) -> None:
        rule = self._ggo_rule
        floor = None if rule is None else min(rule.box_floor, self.ggo_detection.threshold)
        boxes = timer.run("ggo_detection", self.ggo_detection.predict, images, floor)
        need = self.ggo_segmentation.needs_lungs
        usable = [i for i, lung in enumerate(lungs) if lung.area_px > 0 or not need]
        for i in set(range(len(images))) - set(usable):
            results[i].warnings.append("ggo: skipped, lungs-only input needs a lung mask; none found")
        masks = timer.run("ggo_segmentation", self.ggo_segmentation.predict,
                          [images[i] for i in usable], [lungs[i].mask for i in usable])
        for i, (mask, prob) in zip(usable, masks, strict=True):
            ggo = (self._ggo_unchecked(results[i], boxes[i], mask, prob, lungs[i].mask)
                   if rule is None else self._ggo_decided(rule, boxes[i], prob, lungs[i].mask))
            results[i].ggo = ggo
            if ggo.detected and ggo.extent_percent is None:
                results[i].warnings.append("ggo: extent undefined, the lung mask is empty")

    def _ggo_unchecked(self, result: ChestResult, boxes: list[Box], mask: np.ndarray, prob: np.ndarray,
                       lung: np.ndarray) -> GgoResult:
        """A GGO bundle without a decision: the models' output as it is, and a warning that says so."""
        result.warnings.append(
            f"ggo: {self.ggo_segmentation.bundle.info.name} carries no image-level GGO decision; GGO is "
            "reported unchecked and over-calls normal lungs (see its model card)")
        return GgoResult(boxes=boxes, mask=mask, probability_map=prob,
                         extent_percent=ggo_extent_percent(mask, lung),
                         detection_model=self.ggo_detection.bundle.info,
                         segmentation_model=self.ggo_segmentation.bundle.info)

    def _ggo_decided(self, rule: GgoDecisionRule, boxes: list[Box], prob: np.ndarray, lung: np.ndarray
                     ) -> GgoResult:
        """Specific first: GGO is reported only when the image-level decision says present; then the mask is
        the model's at the rule's pixel threshold inside the lungs, and the boxes those at the detector's own
        operating threshold. Absent: no box, an empty mask, no probability map, no extent."""
        features = decision_features(boxes, prob, lung)
        score = rule.score(features)
        decision = GgoDecision(present=rule.present(score), score=score, threshold=rule.threshold,
                               features=features.to_json(), method=rule.describe())
        detection, segmentation = self.ggo_detection.bundle.info, self.ggo_segmentation.bundle.info
        if not decision.present:
            return GgoResult(boxes=[], mask=np.zeros(prob.shape, dtype=bool), probability_map=None,
                             extent_percent=None, detection_model=detection, segmentation_model=segmentation,
                             decision=decision)
        mask = ggo_mask_in_lungs(prob, lung, rule.mask_threshold)
        return GgoResult(
            boxes=[b for b in boxes if b.confidence >= self.ggo_detection.threshold], mask=mask,
            probability_map=np.where(lung, prob, 0.0).astype(np.float32),
            extent_percent=ggo_extent_percent(mask, lung), detection_model=detection,
            segmentation_model=segmentation, decision=decision)
