"""What each of the five tasks takes from a manifest row: which rows, which label, which target.

Label conventions are the pipeline's (``pipelines/tasks``): projection labels ``[frontal,
lateral]`` with one logit = P(lateral); covid ``[not COVID-19, COVID-19]`` with one logit =
P(COVID-19); lungs / GGO segmentation one sigmoid channel = P(foreground); GGO detection one
class ``ground_glass_opacity``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from training.manifest import ManifestRow
from training.splits import covid_stratum


@dataclass(frozen=True)
class TaskSpec:
    task: str
    kind: str  # classification | segmentation | detection
    labels: tuple[str, ...]
    accepts: Callable[[ManifestRow], bool]
    stratum: Callable[[Sequence[ManifestRow]], str]
    label_of: Callable[[ManifestRow], int] | None = None
    seg_target: str = ""  # lungs | ggo
    threshold_meaning: str = ""


def _projection_stratum(rows: Sequence[ManifestRow]) -> str:
    return "lateral" if any(r.projection == "lateral" for r in rows) else "frontal"


def _has_mask(kind: str) -> Callable[[Sequence[ManifestRow]], str]:
    def stratum(rows: Sequence[ManifestRow]) -> str:
        return "mask" if any(getattr(r, kind) for r in rows) else "none"

    return stratum


def _ggo_stratum(rows: Sequence[ManifestRow]) -> str:
    return "ggo" if any(r.ggo_mask or r.boxes for r in rows) else "none"


PROJECTION = TaskSpec(
    task="projection",
    kind="classification",
    labels=("frontal", "lateral"),
    accepts=lambda r: r.projection in ("frontal", "lateral"),
    stratum=_projection_stratum,
    label_of=lambda r: int(r.projection == "lateral"),
    threshold_meaning="P(lateral) at or above it calls the image lateral",
)
COVID = TaskSpec(
    task="covid",
    kind="classification",
    labels=("not COVID-19", "COVID-19"),
    accepts=lambda r: r.covid in ("0", "1") and r.projection == "frontal",
    stratum=covid_stratum,
    label_of=lambda r: int(r.covid == "1"),
    threshold_meaning="P(COVID-19) at or above it is called positive",
)
LUNGS = TaskSpec(
    task="lungs",
    kind="segmentation",
    labels=("background", "lung"),
    accepts=lambda r: bool(r.lung_mask) and r.projection != "lateral",
    stratum=_has_mask("lung_mask"),
    seg_target="lungs",
    threshold_meaning="P(lung) at or above it is lung",
)
GGO_SEGMENTATION = TaskSpec(
    task="ggo_segmentation",
    kind="segmentation",
    labels=("background", "ground_glass_opacity"),
    accepts=lambda r: bool(r.ggo_mask),
    stratum=_has_mask("ggo_mask"),
    seg_target="ggo",
    threshold_meaning="P(GGO) at or above it is GGO",
)
GGO_DETECTION = TaskSpec(
    task="ggo_detection",
    kind="detection",
    labels=("ground_glass_opacity",),
    accepts=lambda r: bool(r.ggo_mask),
    stratum=_ggo_stratum,
    threshold_meaning="boxes with confidence at or above it are reported",
)

TASK_SPECS: dict[str, TaskSpec] = {
    t.task: t for t in (PROJECTION, COVID, LUNGS, GGO_SEGMENTATION, GGO_DETECTION)
}
