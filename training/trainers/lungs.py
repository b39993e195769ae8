"""Lung segmentation trainer: MONAI U-Net, Dice + BCE, whole-image input.

Mask conventions differ (V7 includes the retro-cardiac lung, OpenIST/JSRT exclude heart and
mediastinum, data README): keep the dataset column in mind when mixing sources.
"""

from __future__ import annotations

from pathlib import Path

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import LUNGS as SPEC
from training.trainers.loop import train_torch_task


def train(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> Path | None:
    return train_torch_task(cfg, SPEC, ctx, resume=resume)
