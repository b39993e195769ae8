"""SimSiam self-supervised pretraining of a classifier backbone on unlabelled network inputs.

Why: the COVID-19 classifier learns from about 1,300 labelled pictures in which the label and the
collection go together, so cross-entropy rewards whatever tells the collections apart (session 8:
inside ieee8023 the score ranks its own "No Finding" pictures at chance). SimSiam (Chen & He, 2021)
learns features without labels, by asking two random views of one picture to map to the same
embedding. The views differ in exactly the acquisition cues that betray a collection (blur,
resolution, noise, tone curve, framing), so the pretrained features are pushed to be invariant to
them. The labelled run then starts from these weights (``[model] init_weights``) instead of random
ones: the domain's own pictures, our own code, no download.

The network is the classifier itself (``training.trainers.loop.build_model``): its penultimate
features (the input of its last ``nn.Linear``, :class:`training.feature_hook.PenultimateFeatures`)
feed a projector and a predictor that live only here. The saved file is the classifier's whole
``state_dict``, its untouched output layer included, so ``load_init_weights`` loads it strictly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.feature_hook import PenultimateFeatures

log = logging.getLogger(__name__)


def view_transform(size: int, seed: int):  # noqa: ANN201 - MONAI Compose
    """One random view: framing (affine, zoom), tone (contrast, gamma, scale), acquisition (blur,
    down-up-sampling, noise) and a hidden patch. Stronger than the labelled run's augmentation: the
    two views must disagree in everything the embedding should ignore."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandCoarseDropout,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleIntensity,
        RandShiftIntensity,
        RandSimulateLowResolution,
    )

    chain = Compose(
        [
            RandAffine(
                prob=1.0,
                rotate_range=0.2,
                scale_range=(-0.25, 0.15),
                translate_range=0.08 * size,
                shear_range=0.05,
                mode="bilinear",
                padding_mode="zeros",
            ),
            RandAdjustContrast(prob=0.6, gamma=(0.6, 1.6)),
            RandScaleIntensity(factors=0.25, prob=0.6),
            RandShiftIntensity(offsets=0.25, prob=0.6),
            RandGaussianSmooth(sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), prob=0.5),
            RandSimulateLowResolution(
                prob=0.5, zoom_range=(0.35, 0.9), downsample_mode="area", upsample_mode="bilinear"
            ),
            RandGaussianNoise(prob=0.5, mean=0.0, std=0.15),
            RandCoarseDropout(holes=1, spatial_size=size // 6, max_spatial_size=size // 3, prob=0.3),
        ]
    )
    chain.set_random_state(seed=seed)
    return chain


class TwoViews(Dataset):
    """Two independent random views of each (C, S, S) float32 input array."""

    def __init__(self, inputs: Sequence[np.ndarray], size: int, seed: int) -> None:
        self.inputs = list(inputs)
        self.first, self.second = view_transform(size, seed), view_transform(size, seed + 1)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(self.inputs[i], dtype=np.float32))
        return torch.as_tensor(self.first(x)).float(), torch.as_tensor(self.second(x)).float()


class SimSiamHeads(nn.Module):
    """Projector (3-layer MLP, BN) and predictor (bottleneck MLP) of SimSiam, on the backbone's features."""

    def __init__(self, features: int, dim: int = 256, bottleneck: int = 64) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(features, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, bottleneck, bias=False), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True),
            nn.Linear(bottleneck, dim),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(features)
        return z, self.predictor(z)


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine similarity with the stop-gradient on the projections (-1 is best)."""
    return -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2


def embedding_spread(z: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised projections: ~1/sqrt(dim) when healthy, 0 when
    every picture maps to one point (SimSiam's known failure, collapse)."""
    return float(F.normalize(z.detach(), dim=1).std(dim=0).mean())


@dataclass
class PretrainSettings:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.05  # SGD, scaled by batch_size / 256 as in the SimSiam paper
    weight_decay: float = 1e-4
    dim: int = 256
    seed: int = 20260101


@dataclass
class EpochLog:
    epoch: int
    loss: float
    spread: float
    seconds: float


def pretrain(
    net: nn.Module, inputs: Sequence[np.ndarray], size: int, settings: PretrainSettings
) -> list[EpochLog]:
    """Train ``net``'s layers up to its last ``nn.Linear`` in place; that layer is left as built.

    Raises ``ValueError`` when too few inputs are given to fill one batch (BatchNorm needs more than
    one picture) and ``RuntimeError`` when the embedding collapses (spread below a tenth of healthy).
    """
    if len(inputs) < max(2, settings.batch_size):
        raise ValueError(f"SimSiam needs at least one full batch of {settings.batch_size} pictures, "
                         f"got {len(inputs)}")
    torch.manual_seed(settings.seed)
    hook = PenultimateFeatures(net, "SimSiam pretraining")
    heads = SimSiamHeads(hook.size, settings.dim)
    loader = DataLoader(
        TwoViews(inputs, size, settings.seed), batch_size=settings.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    lr = settings.lr * settings.batch_size / 256
    output_layer = {id(p) for p in hook.layer.parameters()}
    backbone = [p for p in net.parameters() if id(p) not in output_layer]
    optimizer = torch.optim.SGD(
        [{"params": backbone + list(heads.projector.parameters()), "fix_lr": False},
         {"params": list(heads.predictor.parameters()), "fix_lr": True}],
        lr=lr, momentum=0.9, weight_decay=settings.weight_decay,
    )
    history: list[EpochLog] = []
    net.train()
    heads.train()
    try:
        for epoch in range(settings.epochs):
            start, total, spread, batches = time.time(), 0.0, 0.0, 0
            cosine = lr * 0.5 * (1 + math.cos(math.pi * epoch / settings.epochs))
            for group in optimizer.param_groups:  # the predictor keeps its rate (SimSiam paper, 4.4)
                group["lr"] = lr if group["fix_lr"] else cosine
            for a, b in loader:
                net(torch.cat([a, b]))
                z, p = heads(hook.take("SimSiam pretraining"))
                z1, z2 = z.chunk(2)
                p1, p2 = p.chunk(2)
                loss = simsiam_loss(p1, p2, z1, z2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, spread, batches = total + loss.item(), spread + embedding_spread(z1), batches + 1
            entry = EpochLog(epoch, total / batches, spread / batches, time.time() - start)
            history.append(entry)
            log.info("SimSiam epoch %d: loss %.4f, spread %.4f (healthy ~%.4f), %.1f s",
                     epoch, entry.loss, entry.spread, 1 / math.sqrt(settings.dim), entry.seconds)
    finally:
        hook.remove()
    if history[-1].spread < 0.1 / math.sqrt(settings.dim):
        raise RuntimeError(f"SimSiam embedding collapsed (spread {history[-1].spread:.4f}); "
                           "lower the learning rate or the epochs")
    return history

