"""The training losses: BCE on one logit for the classifiers, soft Dice + BCE for the segmenters.

Class imbalance of a classifier is met either by the sampler (``[train] sampling``) or by BCE's
positive weight (negatives / positives of the training split), never both. A segmenter trained on a
second mask convention (``[data] aux_mask_datasets``) has one output channel per convention, and
each channel learns only from the rows labelled in it (:class:`HeadsSegLoss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss
from torch import nn

from training.config import RunConfig
from training.manifest import ManifestRow
from training.tasks import TaskSpec


class BinaryLoss(nn.BCEWithLogitsLoss):
    """BCE of the network's (N, 1) logits against (N,) labels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.reshape(-1), target)


class SegLoss(nn.Module):
    """Soft Dice per image + BCE on one sigmoid channel."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


class HeadsSegLoss(nn.Module):
    """``loss`` per output channel over the rows labelled in it (``[data] aux_mask_datasets``).

    A target channel filled with :data:`training.data.UNLABELLED` is no label: that row adds nothing
    to that channel. Each channel's loss is weighted by its share of the batch, so a batch of one
    convention only weighs as much as a batch of the other. An evaluation-mode network that serves
    only channel 0 is scored on channel 0 alone.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.sum() * 0.0
        for c in range(min(logits.shape[1], target.shape[1])):
            labelled = target[:, c].flatten(1).amax(dim=1) >= 0  # any labelled pixel in this channel
            if bool(labelled.any()):
                share = labelled.float().mean()
                total = total + share * self.loss(logits[labelled, c : c + 1], target[labelled, c : c + 1])
        return total


def build_loss(cfg: RunConfig, spec: TaskSpec, train_rows: Sequence[ManifestRow], device: str) -> nn.Module:
    """The run's loss: BCE (positive weight only for unweighted sampling) or Dice + BCE."""
    if spec.kind == "classification":
        positives = sum(spec.label_of(r) for r in train_rows)
        negatives = len(train_rows) - positives
        pos_weight = None
        if cfg.train.class_weighting and cfg.train.sampling == "shuffle" and positives and negatives:
            pos_weight = torch.tensor([negatives / positives], device=device)
        return BinaryLoss(pos_weight=pos_weight)
    return HeadsSegLoss(SegLoss()) if cfg.data.aux_mask_datasets else SegLoss()
