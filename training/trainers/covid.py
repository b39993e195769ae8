"""COVID-19 trainer: VGG16/VGG19 as in the reference paper, or a lighter backbone
(ResNet18, DenseNet121), on the whole image or on the lungs only ([input] mode).

lungs_only input needs a lung mask per image: the manual one from the manifest, else one predicted
by a lungs bundle named in the run config (lung_bundle). Source-balanced sampling
([train] sampling = "source_balanced") draws every source x class equally often, so that a
source with only positives cannot dominate what the network learns. Every COVID model card
reports the shortcut check (AUC with the lungs removed / lungs only) and per-source AUC.
"""

from __future__ import annotations

from pathlib import Path

from training.config import RunConfig
from training.distributed import DistContext
from training.tasks import COVID as SPEC
from training.trainers.loop import train_torch_task


def train(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> Path | None:
    return train_torch_task(cfg, SPEC, ctx, resume=resume)
