"""What the validation split says about an epoch: the network's outputs and the metric that keeps it.

Higher is better. A classifier is kept by its validation AUC (minus the loss while the split holds one
class only), a segmenter by its mean per-image Dice at 0.5. A trainer may bring its own rule
(:data:`Selection`; the covid trainer does); the same rule then names the exported model's
``selection_metric``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipelines.runtime import foreground_probability, positive_probability
from training.manifest import ManifestRow
from training.metrics import dice_iou, roc_auc
from training.tasks import TaskSpec


@dataclass
class Predictions:
    """Validation outputs of one epoch (model grid for segmentation)."""

    loss: float
    scores: np.ndarray  # classification: P(positive) per row
    labels: np.ndarray
    seg_probs: list[np.ndarray] | None = None
    seg_truth: list[np.ndarray] | None = None


Selection = Callable[[Predictions, Sequence[ManifestRow]], tuple[str, float]]


def predict(
    net: nn.Module, data: Dataset, spec: TaskSpec, loss_fn: nn.Module, device: str, batch_size: int
) -> Predictions:
    """The network's outputs and mean loss over ``data``, in order, without gradients."""
    net.eval()
    losses, scores, labels, probs, truths = [], [], [], [], []
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = net(x)
            losses.append(float(loss_fn(out, y)) * len(y))
            if spec.kind == "classification":
                scores += positive_probability(out).cpu().tolist()
                labels += y.cpu().int().tolist()
            else:
                probs += list(foreground_probability(out).cpu().numpy())
                truths += list(y[:, 0].cpu().numpy() > 0.5)
    n = max(1, len(data))
    return Predictions(
        loss=sum(losses) / n,
        scores=np.asarray(scores),
        labels=np.asarray(labels),
        seg_probs=probs or None,
        seg_truth=truths or None,
    )


def validation_metric(pred: Predictions, spec: TaskSpec) -> tuple[str, float]:
    """Classification: AUC (minus the loss when one class is missing); segmentation: mean Dice."""
    if spec.kind == "classification":
        if len(set(pred.labels.tolist())) == 2:
            return "auc", roc_auc(pred.labels, pred.scores)
        return "neg_loss", -pred.loss
    dice = [dice_iou(p >= 0.5, t)[0] for p, t in zip(pred.seg_probs or [], pred.seg_truth or [], strict=True)]
    return "dice", float(np.mean(dice)) if dice else 0.0


def default_selection(spec: TaskSpec) -> Selection:
    """The epoch rule when a trainer brings none of its own: :func:`validation_metric`."""

    def select(pred: Predictions, _rows: Sequence[ManifestRow]) -> tuple[str, float]:
        return validation_metric(pred, spec)

    return select
