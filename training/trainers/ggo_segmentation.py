"""GGO segmentation trainer: MONAI U-Net on the radiologist GGO masks (GeneralBlockchain)."""

from __future__ import annotations

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import GGO_SEGMENTATION as SPEC
from training.trained import TrainedModel
from training.trainers.fit import fit as fit_torch


def fit(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> TrainedModel | None:
    return fit_torch(cfg, SPEC, ctx, resume=resume)
