"""Lung segmentation trainer: MONAI U-Net, Dice + BCE, whole-image input.

Mask conventions differ (V7 includes the retro-cardiac lung, OpenIST/JSRT exclude heart and
mediastinum, data README): keep the dataset column in mind when mixing sources.
"""

from __future__ import annotations

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import LUNGS as SPEC
from training.trained import TrainedModel
from training.trainers.fit import fit as fit_torch


def fit(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> TrainedModel | None:
    return fit_torch(cfg, SPEC, ctx, resume=resume)
