"""A trained network at its best epoch, with what the export needs to evaluate and describe it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from training.cache import ArrayCache
from training.manifest import ManifestRow
from training.tasks import TaskSpec
from training.validation import Selection


@dataclass
class TrainedModel:
    """``fit``'s result (also built for a mean ensemble of trained networks).

    ``best_epoch`` is a list for an ensemble (one per member). ``loss_fn`` and ``selection`` are the
    run's own, so the exported validation figures are computed as the epoch was chosen.
    """

    spec: TaskSpec
    net: nn.Module
    definition: dict[str, Any]
    best_epoch: int | list[int]
    in_spec: dict[str, Any]
    rows: list[ManifestRow]
    manifest_sha: str
    cache: ArrayCache
    lung_masks: dict[str, np.ndarray]
    loss_fn: nn.Module
    selection: Selection
