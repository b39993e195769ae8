"""Class-conditional source adversary for the COVID classifier ([train] source_adversary).

Why: in these data COVID-19 images come from one collection (ieee8023) and most negatives from
others (NIH), so a classifier can score the collection instead of the lungs. Source-balanced
sampling makes the collection useless for the loss on average, but the features may still carry it.
Here a small head tries to tell, AMONG THE NEGATIVES ONLY, which collection an image came from
(ieee8023 other findings vs NIH), and a gradient-reversal layer (Ganin & Lempitsky 2015) trains the
backbone to defeat it. Negatives only, because every positive is from ieee8023: asking the features
to hide the collection of positives would ask them to hide the label. The outcome wanted is that
"pneumonia, not COVID-19" is learned from the 570 NIH + ieee8023 negatives as one class of lungs,
not as two collections.

The head lives only during training: it reads the input of the network's last ``nn.Linear``
through a forward hook, so the exported bundle is the plain classifier. The ``train_loss`` column of
``metrics.csv`` includes the adversary's weighted cross-entropy; the validation figures do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from training.errors import ConfigError
from training.feature_hook import PenultimateFeatures
from training.manifest import ManifestRow


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]  # noqa: ANN001
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient comes back multiplied by ``-scale``."""
    return _ReverseGradient.apply(x, scale)


def ramp(progress: float) -> float:
    """DANN's schedule 2 / (1 + exp(-10 p)) - 1: no reversal at the start, ~1 from half-way."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


def negative_sources(rows: Sequence[ManifestRow], labels: Sequence[int]) -> tuple[list[int], list[str]]:
    """Per row: the index of its dataset among the negatives' datasets, or -1 for a positive."""
    names = sorted({r.dataset for r, y in zip(rows, labels, strict=True) if y == 0})
    index = {name: k for k, name in enumerate(names)}
    return [index[r.dataset] if y == 0 else -1 for r, y in zip(rows, labels, strict=True)], names


class WithIndex(Dataset):
    """A dataset's items with their index appended, so a batch can be matched to its rows."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple:
        return (*self.data[i], i)


class SourceAdversary(nn.Module):
    """Predicts a negative's collection from the classifier's penultimate features, through reversal."""

    def __init__(self, net: nn.Module, groups: Sequence[int], n_groups: int, weight: float) -> None:
        super().__init__()
        if n_groups < 2:
            raise ConfigError(f"source_adversary needs negatives from >= 2 datasets, got {n_groups}")
        self._features = PenultimateFeatures(net, "source_adversary")
        self.head = nn.Sequential(nn.Linear(self._features.size, 64), nn.ReLU(), nn.Linear(64, n_groups))
        self.register_buffer("groups", torch.as_tensor(list(groups), dtype=torch.long), persistent=False)
        self.weight = weight

    def loss(self, indices: torch.Tensor, progress: float) -> torch.Tensor:
        """Cross-entropy of the source guess on the batch's negatives (0 when it holds none)."""
        features = self._features.take("SourceAdversary.loss")
        groups = self.groups[indices.to(self.groups.device)]
        keep = groups >= 0
        if not bool(keep.any()):
            return features.sum() * 0.0
        reversed_ = reverse_gradient(features[keep], ramp(progress))
        return self.weight * nn.functional.cross_entropy(self.head(reversed_), groups[keep])

    def detach(self) -> None:
        """Remove the hook: the network is exported without any trace of the adversary."""
        self._features.remove()
