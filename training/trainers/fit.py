"""The one PyTorch training loop behind the projection, lungs, covid and GGO segmentation trainers.

Read top to bottom: seed -> data (split manifest, cache) -> network from ``pipelines.networks``
-> epochs (train on every rank with DDP, validate on rank 0) -> keep the best epoch by the
validation metric only -> the best checkpoint, loaded. The runner (``training.run``) then exports
it (threshold on validation, test metrics, bundle). Each epoch writes ``checkpoints/last.pt``
(model, optimiser, epoch, best so far, RNG state, config, manifest hash) so ``--resume`` continues
exactly; ``metrics.csv`` gets one line per epoch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from pipelines.networks import build_network, network_def
from training.cache import ArrayCache, rows_with_input
from training.config import RunConfig
from training.data import prepare_rows, sample_weights, split_rows, task_dataset
from training.distributed import DistContext, EpochSampler
from training.errors import ConfigError, TrainingError
from training.inputs import input_spec_dict, lung_masks_for, run_cache
from training.losses import build_loss
from training.manifest import ManifestRow
from training.tasks import TaskSpec
from training.trained import TrainedModel
from training.validation import Selection, default_selection, predict

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


@dataclass
class Progress:
    """Where a run stands between epochs (restored by ``--resume``)."""

    start_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1


@dataclass
class RunData:
    """The run's split manifest, network inputs and the train / validation datasets built on them."""

    rows: list[ManifestRow]
    manifest_sha: str
    cache: ArrayCache
    in_spec: dict[str, Any]
    lung_masks: dict[str, np.ndarray]
    train_rows: list[ManifestRow]
    val_rows: list[ManifestRow]
    train_data: Dataset
    val_data: Dataset


def fit(
    cfg: RunConfig,
    spec: TaskSpec,
    ctx: DistContext,
    *,
    resume: bool = False,
    selection: Selection | None = None,
) -> TrainedModel | None:
    """Train and keep the best epoch by validation. Returns it loaded (rank 0) or None (other ranks).

    ``selection(predictions, validation_rows) -> (name, value)``, higher is better, replaces the
    default validation metric for the epoch choice when a trainer needs another rule.
    """
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // ctx.world_size))
    seed_everything(cfg.seed)
    ckpt_dir = cfg.run_dir / "checkpoints"
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = load_run_data(cfg, spec, ctx)
    select = selection or default_selection(spec)
    net, definition = build_model(cfg, spec, data.in_spec["channels"])
    net = net.to(ctx.device)
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if ctx.distributed else net
    loss_fn = build_loss(cfg, spec, data.train_rows, ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.train.epochs))
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    progress = Progress()
    if resume and last_path.is_file():
        progress = load_checkpoint(last_path, net, optimizer, scheduler, data.manifest_sha)
        log.info("resumed %s at epoch %d (best %s at %d)", cfg.run_dir, progress.start_epoch,
                 progress.best_metric, progress.best_epoch)
    weights = sample_weights(data.train_rows, spec, cfg.train.sampling)
    loader, sampler = _loader(data.train_data, cfg, ctx, weights, cfg.seed)
    metrics_csv = cfg.run_dir / "metrics.csv"
    if ctx.is_main and not (resume and metrics_csv.is_file()):
        with metrics_csv.open("w", newline="") as fh:
            csv.writer(fh).writerow(METRICS_COLUMNS)
    stale = 0
    for epoch in range(progress.start_epoch, cfg.train.epochs):
        t0 = time.monotonic()
        sampler.set_epoch(epoch)
        desc = f"{spec.task} epoch {epoch + 1}/{cfg.train.epochs}"
        train_loss = ctx.mean(train_epoch(model, loader, loss_fn, optimizer, cfg, ctx, desc))
        scheduler.step()
        is_best = False
        if ctx.is_main:
            pred = predict(net, data.val_data, spec, loss_fn, ctx.device, cfg.train.batch_size)
            name, value = select(pred, data.val_rows)
            is_best = value > progress.best_metric
            if is_best:
                progress.best_metric, progress.best_epoch = value, epoch
                torch.save({"model": net.state_dict(), "epoch": epoch, "metric": value}, best_path)
            state = checkpoint(net, optimizer, scheduler, epoch, progress, cfg, data.manifest_sha, definition)
            torch.save(state, last_path)
            lr = scheduler.get_last_lr()[0]
            row = [epoch, f"{train_loss:.6f}", f"{pred.loss:.6f}", f"{value:.6f}", name, f"{lr:.3g}",
                   f"{time.monotonic() - t0:.1f}", int(is_best)]
            with metrics_csv.open("a", newline="") as fh:
                csv.writer(fh).writerow(row)
            log.info("epoch %d: train loss %.4f, validation %s %.4f%s", epoch, train_loss, name, value,
                     " (best)" if is_best else "")
        stale = 0 if ctx.broadcast_flag(is_best) else stale + 1
        if cfg.train.patience and stale >= cfg.train.patience:
            log.info("early stop: no validation improvement for %d epochs", stale)
            break
    ctx.barrier()
    if not ctx.is_main:
        return None
    if not best_path.is_file():
        raise TrainingError(f"{cfg.run_dir}: no epoch was trained (epochs={cfg.train.epochs})")
    net.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["model"])
    net.eval()
    return TrainedModel(
        spec=spec, net=net, definition=definition, best_epoch=progress.best_epoch, in_spec=data.in_spec,
        rows=data.rows, manifest_sha=data.manifest_sha, cache=data.cache, lung_masks=data.lung_masks,
        loss_fn=loss_fn, selection=select,
    )


def load_run_data(cfg: RunConfig, spec: TaskSpec, ctx: DistContext) -> RunData:
    """Split manifest (written once, read by every rank), inputs, lung masks, the two datasets."""
    rows, manifest_path, manifest_sha = prepare_rows(cfg, spec, ctx)
    cache = run_cache(cfg)
    in_spec = input_spec_dict(cfg, spec)
    lung_masks = lung_masks_for(cfg, spec, rows)
    train_rows = rows_with_input(split_rows(rows, "train"), in_spec, lung_masks)
    val_rows = rows_with_input(split_rows(rows, "validation"), in_spec, lung_masks)
    if not train_rows or not val_rows:
        raise TrainingError(
            f"{manifest_path}: empty train ({len(train_rows)}) or validation ({len(val_rows)})"
        )

    def dataset(rs: list[ManifestRow], augment: bool) -> Dataset:
        return task_dataset(spec, rs, cache, in_spec, augment=augment, seed=cfg.seed + ctx.rank,
                            lung_masks=lung_masks, aux_datasets=cfg.data.aux_mask_datasets)

    return RunData(
        rows=rows, manifest_sha=manifest_sha, cache=cache, in_spec=in_spec, lung_masks=lung_masks,
        train_rows=train_rows, val_rows=val_rows, train_data=dataset(train_rows, cfg.train.augment),
        val_data=dataset(val_rows, False),
    )


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: RunConfig,
    ctx: DistContext,
    desc: str,
) -> float:
    """One pass over the training loader (at most ``max_batches_per_epoch`` batches); its mean loss."""
    model.train()
    total, seen = 0.0, 0
    bar = tqdm(loader, desc=desc, disable=not ctx.is_main, leave=False)
    for step, (x, y) in enumerate(bar):
        if cfg.train.max_batches_per_epoch and step >= cfg.train.max_batches_per_epoch:
            break
        x, y = x.to(ctx.device), y.to(ctx.device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        seen += len(y)
        bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
    return total / max(seen, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_model(cfg: RunConfig, spec: TaskSpec, channels: int) -> tuple[nn.Module, dict[str, Any]]:
    """The configured network (one logit, or one mask channel plus one per aux mask convention)."""
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


def checkpoint(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    progress: Progress,
    cfg: RunConfig,
    manifest_sha: str,
    definition: dict[str, Any],
) -> dict[str, Any]:
    """``last.pt``: everything ``--resume`` needs to continue as if never stopped."""
    return {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "config": cfg.to_dict(),
        "manifest_sha256": manifest_sha,
        "network_def": definition,
        "torch_rng": torch.get_rng_state(),
    }


def load_checkpoint(
    path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, manifest_sha: str
) -> Progress:
    """Restore ``last.pt`` into the network, optimiser, scheduler and torch RNG; refuse another manifest."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["manifest_sha256"] != manifest_sha:
        raise TrainingError(f"{path}: checkpoint was made with another manifest; refusing to resume")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(state["epoch"] + 1, state["best_metric"], state["best_epoch"])


def _loader(
    data: Dataset, cfg: RunConfig, ctx: DistContext, weights: list[float] | None, epoch_seed: int
) -> tuple[DataLoader, Any]:
    if weights is None and ctx.distributed:
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
