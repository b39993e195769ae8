"""Projection trainer: frontal vs lateral, one logit = P(lateral).

Class imbalance (laterals are few: 54 of 648 ieee8023 images) is handled by the BCE positive
weight or by class-balanced sampling ([train] sampling).
"""

from __future__ import annotations

from pathlib import Path

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import PROJECTION as SPEC
from training.trainers.loop import train_torch_task


def train(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> Path | None:
    return train_torch_task(cfg, SPEC, ctx, resume=resume)
