"""The one PyTorch training loop behind the projection, lungs, covid and GGO segmentation trainers.

Read top to bottom: seed -> data (split manifest, cache) -> network from ``pipelines.networks``
-> epochs (train on every rank with DDP, validate on rank 0) -> keep the best epoch by the
validation metric only -> threshold on validation -> test metrics -> bundle. Each epoch writes
``checkpoints/last.pt`` (model, optimiser, epoch, best so far, RNG states, config, manifest
hash) so ``--resume`` continues exactly; ``metrics.csv`` gets one line per epoch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.cache import ArrayCache, classification_input, rows_with_input
from training.config import RunConfig
from training.data import ClassificationData, SegmentationData, prepare_rows, sample_weights, split_rows
from training.distributed import DistContext, EpochSampler
from training.errors import ConfigError, TrainingError
from training.manifest import ManifestRow
from training.tasks import TaskSpec

if TYPE_CHECKING:
    from training.adversary import SourceAdversary
    from training.finding_head import FindingHead

log = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_metric",
    "val_metric_name",
    "lr",
    "seconds",
    "is_best",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def input_spec_dict(cfg: RunConfig, spec: TaskSpec) -> dict[str, Any]:
    from pipelines.preprocess import InputSpec

    data = dict(cfg.input)
    if spec.kind == "segmentation" and data.get("mode", "whole_image") != "whole_image":
        raise ConfigError(f"{cfg.source_file}: [input] mode must be whole_image for {spec.task}")
    return InputSpec.from_dict(data).to_dict()


def build_model(cfg: RunConfig, spec: TaskSpec, channels: int) -> tuple[nn.Module, dict[str, Any]]:
    from pipelines.networks import build_network, network_def

    params = dict(cfg.model.params)
    if spec.kind == "classification":
        params.update(in_channels=channels, num_classes=1)
    else:
        params.update(in_channels=channels, out_channels=1)
        if cfg.data.aux_mask_datasets:
            params["aux_heads"] = len(cfg.data.aux_mask_datasets)
    try:
        definition = network_def(cfg.model.architecture, **params)
        net = build_network(cfg.model.architecture, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg.source_file}: [model] {cfg.model.architecture} {params}: {exc}") from exc
    return net, definition


class SegLoss(nn.Module):
    """Soft Dice (per image, or over the batch with ``batch=True``) + BCE on one sigmoid channel.

    ``positives_only=True``: the (batch) Dice term covers only the images whose target has foreground
    (none in the batch: BCE alone); images with an empty target are taught by BCE only.
    Target pixels below 0 (:data:`training.data.UNLABELLED`: a weak label covers only part of the
    picture) are no label: Dice sees them as certain background of both prediction and target, so they
    add nothing, and BCE averages over the labelled pixels only.
    """

    def __init__(self, batch: bool = False, positives_only: bool = False) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True, batch=batch or positives_only)
        self.bce = nn.BCEWithLogitsLoss()
        self.positives_only = positives_only

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labelled = target >= 0
        if not bool(labelled.all()):
            weight = labelled.float()
            bce = nn.functional.binary_cross_entropy_with_logits(
                logits, target.clamp(min=0), weight=weight, reduction="sum"
            ) / weight.sum().clamp(min=1.0)
            logits = torch.where(labelled, logits, torch.full_like(logits, -30.0))
            target = target.clamp(min=0)
            return self._dice(logits, target) + bce
        return self._dice(logits, target) + self.bce(logits, target)

    def _dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.positives_only:
            has = target.flatten(1).amax(dim=1) > 0
            return self.dice(logits[has], target[has]) if bool(has.any()) else logits.sum() * 0.0
        return self.dice(logits, target)


class HeadsSegLoss(nn.Module):
    """``loss`` per output channel over the rows labelled in it (``[data] aux_mask_datasets``).

    A target channel filled with :data:`training.data.UNLABELLED` is no label: that row adds nothing
    to that channel (a channel labelled only in part is left to ``loss``). Each channel's loss is
    weighted by its share of the batch, so a batch of one convention only weighs as much as a batch of
    the other. An evaluation-mode network that serves only channel 0 is scored on channel 0 alone.
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


@dataclass
class Predictions:
    """Validation outputs of one epoch (model grid for segmentation)."""

    loss: float
    scores: np.ndarray  # classification: P(positive) per row
    labels: np.ndarray
    seg_probs: list[np.ndarray] | None = None
    seg_truth: list[np.ndarray] | None = None


def predict(
    net: nn.Module, data: Dataset, spec: TaskSpec, loss_fn: nn.Module, device: str, batch_size: int
) -> Predictions:
    from pipelines.runtime import foreground_probability, positive_probability

    net.eval()
    losses, scores, labels, probs, truths = [], [], [], [], []
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = net(x)
            if spec.kind == "classification":
                losses.append(float(loss_fn(out.reshape(-1), y)) * len(y))
                scores += positive_probability(out).cpu().tolist()
                labels += y.cpu().int().tolist()
            else:
                losses.append(float(loss_fn(out, y)) * len(y))
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


def validation_metric(
    pred: Predictions, spec: TaskSpec, seg_metric: str = "dice", fp_weight: float = 3.0
) -> tuple[str, float]:
    """Higher is better. Classification: AUC (minus loss when one class is missing); seg: mean Dice
    (``seg_metric="dice_fp"``: see :func:`seg_dice_fp`)."""
    from training.metrics import dice_iou, roc_auc

    if spec.kind == "classification":
        if len(set(pred.labels.tolist())) == 2:
            return "auc", roc_auc(pred.labels, pred.scores)
        return "neg_loss", -pred.loss
    if seg_metric == "dice_fp":
        return "dice_fp", seg_dice_fp(pred.seg_probs or [], pred.seg_truth or [], 0.5, fp_weight)
    dice = [dice_iou(p >= 0.5, t)[0] for p, t in zip(pred.seg_probs or [], pred.seg_truth or [], strict=True)]
    return "dice", float(np.mean(dice)) if dice else 0.0


def seg_dice_fp(
    probs: list[np.ndarray], truths: list[np.ndarray], threshold: float, fp_weight: float
) -> float:
    """Mean Dice over images whose truth has foreground, minus ``fp_weight`` x the mean foreground
    fraction predicted on images whose truth is empty (each term 0 when it has no image)."""
    from training.metrics import dice_iou

    dice, fp = [], []
    for p, t in zip(probs, truths, strict=True):
        if t.any():
            dice.append(dice_iou(p >= threshold, t)[0])
        else:
            fp.append(float((p >= threshold).mean()))
    return (float(np.mean(dice)) if dice else 0.0) - fp_weight * (float(np.mean(fp)) if fp else 0.0)


def _loader(
    data: Dataset, cfg: RunConfig, ctx: DistContext, weights: list[float] | None, epoch_seed: int
) -> tuple[DataLoader, Any]:
    if weights is None and ctx.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler: Any = DistributedSampler(
            data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=epoch_seed
        )
    else:
        sampler = EpochSampler(
            len(data), seed=epoch_seed, rank=ctx.rank, world_size=ctx.world_size, weights=weights
        )
    loader = DataLoader(
        data,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.train.num_workers,
        drop_last=False,
    )
    return loader, sampler


def _set_threads(cfg: RunConfig, ctx: DistContext) -> None:
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // ctx.world_size)
    torch.set_num_threads(threads)


Selection = Callable[[Predictions, Sequence[ManifestRow]], tuple[str, float]]


def train_torch_task(
    cfg: RunConfig,
    spec: TaskSpec,
    ctx: DistContext,
    *,
    resume: bool = False,
    selection: Selection | None = None,
) -> Path | None:
    """Train, select on validation, evaluate, export. Returns the bundle folder (rank 0) or None.

    ``selection(predictions, validation_rows) -> (name, value)`` replaces the default validation
    metric (:func:`validation_metric`) for the epoch choice when a trainer needs another rule.
    """
    from tqdm import tqdm

    from training.export import export_torch_bundle

    _set_threads(cfg, ctx)
    seed_everything(cfg.seed)
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    rows, manifest_path, manifest_sha = prepare_rows(cfg, spec, ctx)
    cache = ArrayCache(cfg.data.cache_dir or run_dir.parent / "cache")
    in_spec = input_spec_dict(cfg, spec)
    train_rows, val_rows = split_rows(rows, "train"), split_rows(rows, "validation")
    lung_masks = lung_masks_for(cfg, spec, rows, in_spec)
    train_rows = rows_with_input(train_rows, in_spec, lung_masks)
    val_rows = rows_with_input(val_rows, in_spec, lung_masks)
    weak = [r.image_path for r in rows if r.ggo_labelled and r.split != "train"]
    if weak:
        raise TrainingError(
            f"{manifest_path}: {len(weak)} weakly labelled row(s) (ggo_labelled) outside the train split, "
            f"first {weak[0]}: a label that covers part of a picture cannot score a model"
        )
    if not train_rows or not val_rows:
        raise TrainingError(
            f"{manifest_path}: empty train ({len(train_rows)}) or validation ({len(val_rows)})"
        )

    def dataset(rs: list[ManifestRow], augment: bool) -> Dataset:
        if spec.kind == "classification":
            return ClassificationData(
                rs, spec, cache, in_spec, augment=augment, seed=cfg.seed + ctx.rank, lung_masks=lung_masks,
                acquisition=cfg.train.augment_acquisition, hflip=cfg.train.augment_hflip,
            )
        return SegmentationData(
            rs, spec, cache, in_spec, augment=augment, seed=cfg.seed + ctx.rank,
            aux_datasets=cfg.data.aux_mask_datasets,
        )

    train_data, val_data = dataset(train_rows, cfg.train.augment), dataset(val_rows, False)

    select: Selection = selection or default_selection(cfg, spec)
    net, definition = build_model(cfg, spec, in_spec["channels"])
    if cfg.model.init_weights:
        load_init_weights(net, cfg)
    net = net.to(ctx.device)
    model: nn.Module = net
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(net)
    adversary = _source_adversary(cfg, spec, ctx, net, train_rows)
    finding_head = _finding_head(cfg, spec, ctx, net, train_rows)
    if adversary is not None or finding_head is not None:
        from training.adversary import WithIndex

        train_data = WithIndex(train_data)
    loss_fn = build_loss(cfg, spec, train_rows, ctx.device)
    parameters = [
        *model.parameters(),
        *(adversary.parameters() if adversary is not None else ()),
        *(finding_head.parameters() if finding_head is not None else ()),
    ]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.train.epochs))
    start_epoch, best_metric, best_epoch = 0, -math.inf, -1
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state["manifest_sha256"] != manifest_sha:
            raise TrainingError(f"{last_path}: checkpoint was made with another manifest; refusing to resume")
        net.load_state_dict(state["model"])
        if adversary is not None:
            adversary.load_state_dict(state["adversary"])
        if finding_head is not None:
            finding_head.load_state_dict(state["finding_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_metric, best_epoch = state["epoch"] + 1, state["best_metric"], state["best_epoch"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at epoch %d (best %s at %d)", run_dir, start_epoch, best_metric, best_epoch)
    weights = sample_weights(train_rows, spec, cfg.train.sampling, cfg.train.balance_within)
    loader, sampler = _loader(train_data, cfg, ctx, weights, cfg.seed)
    metrics_csv = run_dir / "metrics.csv"
    if ctx.is_main and not (resume and metrics_csv.is_file()):
        with metrics_csv.open("w", newline="") as fh:
            csv.writer(fh).writerow(METRICS_COLUMNS)
    stale = 0
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.monotonic()
        sampler.set_epoch(epoch)
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"{spec.task} epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not ctx.is_main,
            leave=False,
        )
        for step, batch in enumerate(bar):
            if cfg.train.max_batches_per_epoch and step >= cfg.train.max_batches_per_epoch:
                break
            x, y = batch[0].to(ctx.device), batch[1].to(ctx.device)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out.reshape(-1), y) if spec.kind == "classification" else loss_fn(out, y)
            if adversary is not None:
                loss = loss + adversary.loss(batch[2], (epoch + step / len(loader)) / cfg.train.epochs)
            if finding_head is not None:
                loss = loss + finding_head.loss(batch[2])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
        scheduler.step()
        train_loss = ctx.mean(total / max(seen, 1))
        is_best = False
        if ctx.is_main:
            pred = predict(net, val_data, spec, loss_fn, ctx.device, cfg.train.batch_size)
            name, value = select(pred, val_rows)
            is_best = value > best_metric
            if is_best:
                best_metric, best_epoch = value, epoch
                torch.save({"model": net.state_dict(), "epoch": epoch, "metric": value}, best_path)
            torch.save(
                {
                    "model": net.state_dict(),
                    "adversary": adversary.state_dict() if adversary is not None else None,
                    "finding_head": finding_head.state_dict() if finding_head is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "config": cfg.to_dict(),
                    "manifest_sha256": manifest_sha,
                    "network_def": definition,
                    "torch_rng": torch.get_rng_state(),
                },
                last_path,
            )
            with metrics_csv.open("a", newline="") as fh:
                csv.writer(fh).writerow(
                    [
                        epoch,
                        f"{train_loss:.6f}",
                        f"{pred.loss:.6f}",
                        f"{value:.6f}",
                        name,
                        f"{scheduler.get_last_lr()[0]:.3g}",
                        f"{time.monotonic() - t0:.1f}",
                        int(is_best),
                    ]
                )
            log.info(
                "epoch %d: train loss %.4f, validation %s %.4f%s",
                epoch,
                train_loss,
                name,
                value,
                " (best)" if is_best else "",
            )
        stale = 0 if ctx.broadcast_flag(is_best) else stale + 1
        if cfg.train.patience and stale >= cfg.train.patience:
            log.info("early stop: no validation improvement for %d epochs", stale)
            break
    ctx.barrier()
    if not ctx.is_main:
        return None
    if not best_path.is_file():
        raise TrainingError(
            f"{run_dir}: no epoch was trained (epochs={cfg.train.epochs}, resumed at {start_epoch})"
        )
    if adversary is not None:
        adversary.detach()
    if finding_head is not None:
        finding_head.detach()
    net.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["model"])
    net.eval()
    return export_torch_bundle(
        cfg,
        spec,
        net,
        definition,
        in_spec,
        rows,
        manifest_sha,
        cache,
        best_epoch=best_epoch,
        lung_masks=lung_masks,
        loss_fn=loss_fn,
        selection=select,
    )


def build_loss(cfg: RunConfig, spec: TaskSpec, train_rows: Sequence[ManifestRow], device: str) -> nn.Module:
    """The run's loss: BCE (pos_weight only for unweighted sampling) or the configured segmentation loss."""
    if spec.kind == "classification":
        positives = sum(spec.label_of(r) for r in train_rows)
        negatives = len(train_rows) - positives
        pos_weight = None
        if cfg.train.class_weighting and cfg.train.sampling == "shuffle" and positives and negatives:
            pos_weight = torch.tensor([negatives / positives], device=device)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    loss = SegLoss(
        batch=cfg.train.seg_loss == "batch_dice_bce", positives_only=cfg.train.seg_loss == "pos_dice_bce"
    )
    return HeadsSegLoss(loss) if cfg.data.aux_mask_datasets else loss


def default_selection(cfg: RunConfig, spec: TaskSpec) -> Selection:
    """The epoch choice when a trainer brings no rule of its own: :func:`validation_metric`."""

    def select(pred: Predictions, _rows: Sequence[ManifestRow]) -> tuple[str, float]:
        return validation_metric(pred, spec, cfg.train.seg_metric, cfg.train.seg_fp_weight)

    return select


def _source_adversary(
    cfg: RunConfig, spec: TaskSpec, ctx: DistContext, net: nn.Module, train_rows: Sequence[ManifestRow]
) -> SourceAdversary | None:
    """The training-only source adversary of [train] source_adversary, or None when it is off."""
    if cfg.train.source_adversary <= 0:
        return None
    if spec.kind != "classification" or spec.label_of is None:
        raise ConfigError(f"{cfg.source_file}: [train] source_adversary is for classification tasks only")
    if ctx.distributed:
        raise ConfigError(f"{cfg.source_file}: [train] source_adversary runs in a single process only")
    from training.adversary import SourceAdversary, negative_sources

    groups, names = negative_sources(train_rows, [spec.label_of(r) for r in train_rows])
    log.info("source adversary over the negatives of %s (weight %s)", names, cfg.train.source_adversary)
    return SourceAdversary(net, groups, len(names), cfg.train.source_adversary).to(ctx.device)


def _finding_head(
    cfg: RunConfig, spec: TaskSpec, ctx: DistContext, net: nn.Module, train_rows: Sequence[ManifestRow]
) -> FindingHead | None:
    """The training-only "any finding" head of [train] finding_aux, or None when it is off."""
    if cfg.train.finding_aux <= 0:
        return None
    if spec.kind != "classification":
        raise ConfigError(f"{cfg.source_file}: [train] finding_aux is for classification tasks only")
    if ctx.distributed:
        raise ConfigError(f"{cfg.source_file}: [train] finding_aux runs in a single process only")
    from training.finding_head import FindingHead, finding_labels

    labels = finding_labels(train_rows, cfg.train.finding_aux_datasets)
    used = [y for y in labels if y >= 0]
    log.info(
        "finding head on %s: %d training images with findings, %d without (weight %s)",
        cfg.train.finding_aux_datasets, sum(used), len(used) - sum(used), cfg.train.finding_aux,
    )
    return FindingHead(net, labels, cfg.train.finding_aux).to(ctx.device)


def load_init_weights(net: nn.Module, cfg: RunConfig) -> None:
    """Start from ``[model] init_weights`` (a state_dict of the same network; its sha256 checked)."""
    from training.manifest import file_sha256

    path = Path(cfg.model.init_weights)
    if not path.is_file():
        raise ConfigError(f"{cfg.source_file}: [model] init_weights {path} not found")
    sha = file_sha256(path)
    if cfg.model.init_sha256 and sha != cfg.model.init_sha256:
        raise ConfigError(f"{cfg.source_file}: [model] init_weights {path} has sha256 {sha}, "
                          f"not the configured {cfg.model.init_sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ConfigError(
            f"{cfg.source_file}: [model] init_weights {path} does not fit the network: {exc}"
        ) from exc
    log.info("initialised from %s (sha256 %s)", path, sha)


def classification_inputs(
    cfg: RunConfig, spec: TaskSpec, rows: Sequence[ManifestRow]
) -> tuple[list[ManifestRow], list[np.ndarray]]:
    """The rows the recipe's network can take and their inputs, prepared as its run prepares them
    (lung masks from ``[run] lung_bundle``, the recipe's image cache): for tools that read the network
    inputs outside a run (SimSiam pretraining, the silhouette check)."""
    in_spec = input_spec_dict(cfg, spec)
    masks = lung_masks_for(cfg, spec, list(rows), in_spec)
    usable = rows_with_input(rows, in_spec, masks)
    cache = ArrayCache(cfg.data.cache_dir or cfg.run_dir.parent / "cache")
    inputs = [classification_input(cache, r, in_spec, lung_mask=masks.get(r.image_path)) for r in usable]
    return usable, inputs


def lung_masks_for(
    cfg: RunConfig, spec: TaskSpec, rows: list[ManifestRow], in_spec: dict
) -> dict[str, np.ndarray]:
    """Lung masks predicted by ``cfg.lung_bundle`` for EVERY covid row, manual mask or not.

    Inference uses predicted masks, and in ieee8023 only COVID-positive images have manual (V7)
    masks: mixing manual masks for positives with predicted ones for negatives would hand the
    classifier the label through the mask style. So when a lungs bundle is named, all masks come
    from it; without one, only images with a manual mask can be used in lungs_only mode.
    """
    if spec.task != "covid" or not cfg.lung_bundle:
        return {}
    from training.evaluate import predict_lung_masks

    cache = ArrayCache(cfg.data.cache_dir or cfg.run_dir.parent / "cache")
    return predict_lung_masks(Path(cfg.lung_bundle), rows, cache)
