"""The network input of a run: the bundle's ``input`` block and, for covid, every image's lung mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.preprocess import InputSpec
from training.cache import ArrayCache
from training.config import RunConfig
from training.errors import ConfigError
from training.evaluate import predict_lung_masks
from training.manifest import ManifestRow
from training.tasks import TaskSpec


def input_spec_dict(cfg: RunConfig, spec: TaskSpec) -> dict[str, Any]:
    """``[input]`` resolved to the bundle's input block (segmenters see the whole image)."""
    data = dict(cfg.input)
    if spec.kind == "segmentation" and data.get("mode", "whole_image") != "whole_image":
        raise ConfigError(f"{cfg.source_file}: [input] mode must be whole_image for {spec.task}")
    return InputSpec.from_dict(data).to_dict()


def run_cache(cfg: RunConfig) -> ArrayCache:
    """The run's image cache: ``[data] cache_dir``, else ``cache/`` beside the run folder."""
    return ArrayCache(cfg.data.cache_dir or cfg.run_dir.parent / "cache")


def lung_masks_for(cfg: RunConfig, spec: TaskSpec, rows: list[ManifestRow]) -> dict[str, np.ndarray]:
    """Lung masks predicted by ``cfg.lung_bundle`` for EVERY covid row, manual mask or not.

    Inference uses predicted masks, and in ieee8023 only COVID-positive images have manual (V7)
    masks: mixing manual masks for positives with predicted ones for negatives would hand the
    classifier the label through the mask style. So when a lungs bundle is named, all masks come
    from it; without one, only images with a manual mask can be used in lungs_only mode.
    """
    if spec.task != "covid" or not cfg.lung_bundle:
        return {}
    return predict_lung_masks(Path(cfg.lung_bundle), rows, run_cache(cfg))
