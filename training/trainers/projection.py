"""Projection trainer: frontal vs lateral, one logit = P(lateral).

Class imbalance (laterals are few: 54 of 648 ieee8023 images) is handled by the BCE positive
weight or by class-balanced sampling ([train] sampling).
"""

from __future__ import annotations

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import PROJECTION as SPEC
from training.trained import TrainedModel
from training.trainers.fit import fit as fit_torch


def fit(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> TrainedModel | None:
    return fit_torch(cfg, SPEC, ctx, resume=resume)
