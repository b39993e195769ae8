"""GGO segmentation trainer: MONAI U-Net on the radiologist GGO masks (GeneralBlockchain)."""

from __future__ import annotations

from pathlib import Path

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import GGO_SEGMENTATION as SPEC
from training.trainers.loop import train_torch_task


def train(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> Path | None:
    return train_torch_task(cfg, SPEC, ctx, resume=resume)
