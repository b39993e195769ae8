"""From a run configuration to split manifest rows and torch datasets.

Order matters for honesty: scan -> merge -> keep the task's rows -> link near-duplicates ->
split by patient -> leakage check (fails the run) -> write ``manifest.csv`` into the run folder
and hash it. A resumed run reads that manifest back instead of scanning again, so its split
cannot change under it.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, RandAffined, RandScaleIntensityd, RandShiftIntensityd
from torch.utils.data import Dataset

from training.cache import ArrayCache, classification_input, segmentation_pair
from training.config import RunConfig
from training.datasets import scan_dataset
from training.distributed import DistContext
from training.errors import ConfigError, LeakageError
from training.manifest import ManifestRow, file_sha256, merge_manifests, read_manifest, write_manifest
from training.splits import (
    assign_splits,
    check_leakage,
    near_duplicate_leaks,
    near_duplicate_pairs,
    thumbnails,
)
from training.tasks import TaskSpec

log = logging.getLogger(__name__)

LARGE_FOR_NEAR_DUPLICATES = 50_000


def resolve_data_path(cfg: RunConfig, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(cfg.data.root) / p


def collect_rows(cfg: RunConfig) -> list[ManifestRow]:
    if cfg.data.manifest:
        return read_manifest(
            resolve_data_path(cfg, cfg.data.manifest)
            if not Path(cfg.data.manifest).is_file()
            else Path(cfg.data.manifest)
        )
    if not cfg.data.sources:
        raise ConfigError(f"{cfg.source_file}: [data] needs sources (adapter + path) or a manifest")
    parts = []
    for source in cfg.data.sources:
        folder = resolve_data_path(cfg, source.path)
        log.info("scanning %s with adapter %s", folder, source.adapter)
        parts.append(scan_dataset(source.adapter, folder))
    return merge_manifests(parts)


def _subsample(rows: list[ManifestRow], limit: int, seed: int, spec: TaskSpec) -> list[ManifestRow]:
    """At most ``limit`` rows per split, seeded, alternating classes so tiny runs see both."""
    if limit <= 0:
        return rows
    rng = random.Random(seed)
    kept: list[ManifestRow] = []
    for split in ("train", "validation", "test"):
        by_class: dict[int, list[ManifestRow]] = defaultdict(list)
        for r in rows:
            if r.split == split:
                by_class[spec.label_of(r) if spec.label_of else 0].append(r)
        for members in by_class.values():
            rng.shuffle(members)
        queues = [by_class[k] for k in sorted(by_class)]
        picked: list[ManifestRow] = []
        while len(picked) < limit and any(queues):
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop())
        kept += picked
    return kept


def prepare_rows(cfg: RunConfig, spec: TaskSpec, ctx: DistContext) -> tuple[list[ManifestRow], Path, str]:
    """The run's split manifest (written by rank 0, read by every rank) and its sha256."""
    run_dir = cfg.run_dir
    manifest_path = run_dir / "manifest.csv"
    if ctx.is_main and not manifest_path.is_file():
        rows = [r for r in collect_rows(cfg) if spec.accepts(r)]
        if not rows:
            raise ConfigError(f"{cfg.source_file}: no image in the data fits task {spec.task}")
        aux = set(cfg.data.aux_mask_datasets)
        for r in rows:
            if r.dataset in aux:
                r.split = "train"  # another mask convention: never validated or tested
        split_these = [r for r in rows if r.dataset not in aux]
        if not all(r.split for r in split_these):
            links: list[tuple[int, int]] = []
            if cfg.data.near_duplicates:
                if len(split_these) > LARGE_FOR_NEAR_DUPLICATES:
                    log.warning(
                        "near-duplicate linking decodes %d images and compares all pairs (N^2); "
                        "set [data] near_duplicates = false for very large sets",
                        len(split_these),
                    )
                links = [(a, b) for a, b, _ in near_duplicate_pairs(thumbnails(split_these))]
                log.info("%d near-duplicate pair(s) linked before splitting", len(links))
            assign_splits(
                split_these,
                fractions=cfg.data.split_fractions,
                seed=cfg.data.split_seed,
                stratum=spec.stratum,
                extra_links=links,
            )
        check_leakage(rows)
        if cfg.data.near_duplicates:
            leaks = near_duplicate_leaks(rows)
            if leaks:
                raise LeakageError(
                    f"{len(leaks)} near-identical picture pair(s) across splits, first: "
                    f"{[(rows[a].image_path, rows[b].image_path) for a, b, _ in leaks[:3]]}",
                    [f"{rows[a].image_path} ~ {rows[b].image_path}" for a, b, _ in leaks],
                )
        rows = _subsample(rows, cfg.data.max_images, cfg.seed, spec)
        write_manifest(rows, manifest_path)
    ctx.barrier()
    rows = read_manifest(manifest_path)
    check_leakage(rows)
    return rows, manifest_path, file_sha256(manifest_path)


def split_rows(rows: Sequence[ManifestRow], split: str) -> list[ManifestRow]:
    return [r for r in rows if r.split == split]


def sample_weights(rows: Sequence[ManifestRow], spec: TaskSpec, mode: str) -> list[float] | None:
    """Per-row sampling weights: every class (or every source x class) drawn equally often; None for
    ``shuffle``."""
    if mode == "shuffle":
        return None

    def group(r: ManifestRow) -> tuple[str, int]:
        return (r.source if mode == "source_balanced" else "", spec.label_of(r) if spec.label_of else 0)

    counts: dict[tuple[str, int], int] = defaultdict(int)
    for r in rows:
        counts[group(r)] += 1
    return [1.0 / counts[group(r)] for r in rows]


def augmentation(keys: list[str], seed: int, size: int) -> Compose:
    """Mild geometric + intensity augmentation; no left-right flips (anatomy is sided)."""
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    chain = Compose(
        [
            RandAffined(
                keys=keys,
                prob=0.7,
                rotate_range=0.12,
                scale_range=0.1,
                translate_range=0.04 * size,
                mode=modes,
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=["image"], offsets=0.1, prob=0.5),
        ]
    )
    chain.set_random_state(seed=seed)
    return chain


def augment_about(transform: Compose, x: torch.Tensor, outside: float) -> torch.Tensor:
    """Run a geometric augmentation with ``outside`` as its zero.

    The affine pads with 0: shifted so that 0 is the input's outside value while it runs, a non-zero
    outside value does not get a border of another value that inference never shows.
    """
    return torch.as_tensor(transform({"image": x - outside})["image"]).float() + outside


class ClassificationData(Dataset):
    def __init__(
        self,
        rows: Sequence[ManifestRow],
        spec: TaskSpec,
        cache: ArrayCache,
        input_spec: dict,
        *,
        augment: bool,
        seed: int,
        variant: str = "normal",
        lung_masks: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.rows, self.spec, self.cache, self.input_spec = list(rows), spec, cache, input_spec
        self.variant, self.lung_masks = variant, lung_masks or {}
        size = int(input_spec.get("size", 256))
        self.outside = float(input_spec.get("outside_value", 0.0))
        self.transform = augmentation(["image"], seed, size) if augment else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[i]
        arr = classification_input(
            self.cache,
            row,
            self.input_spec,
            variant=self.variant,
            lung_mask=self.lung_masks.get(row.image_path),
        )
        x = torch.from_numpy(np.array(arr, dtype=np.float32))
        if self.transform is not None:
            x = augment_about(self.transform, x, self.outside)
        return x, torch.tensor(float(self.spec.label_of(row)))


UNLABELLED = -1.0  # target value of an output channel that a row has no mask for


class SegmentationData(Dataset):
    """(image, target) pairs; the target has one channel per output head.

    ``aux_datasets`` (``[data] aux_mask_datasets``): a row of ``aux_datasets[i]`` has its mask in
    channel ``i + 1`` and :data:`UNLABELLED` in every other channel; any other row has its mask in
    channel 0. Without aux datasets the target is the usual single channel.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        spec: TaskSpec,
        cache: ArrayCache,
        input_spec: dict,
        *,
        augment: bool,
        seed: int,
        aux_datasets: Sequence[str] = (),
    ) -> None:
        self.rows, self.spec, self.cache, self.input_spec = list(rows), spec, cache, input_spec
        self.aux_datasets = list(aux_datasets)
        size = int(input_spec.get("size", 256))
        self.transform = augmentation(["image", "mask"], seed, size) if augment else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = segmentation_pair(self.cache, self.rows[i], self.input_spec, self.spec.seg_target)
        x = torch.from_numpy(np.array(image, dtype=np.float32))
        y = torch.from_numpy(np.array(mask, dtype=np.float32))
        if self.transform is not None:
            out = self.transform({"image": x, "mask": y})
            x, y = torch.as_tensor(out["image"]).float(), (torch.as_tensor(out["mask"]) > 0.5).float()
        if not self.aux_datasets:
            return x, y
        row = self.rows[i]
        head = self.aux_datasets.index(row.dataset) + 1 if row.dataset in self.aux_datasets else 0
        target = torch.full((1 + len(self.aux_datasets), *y.shape[1:]), UNLABELLED)
        target[head] = y[0]
        return x, target


def task_dataset(
    spec: TaskSpec,
    rows: Sequence[ManifestRow],
    cache: ArrayCache,
    input_spec: dict,
    *,
    augment: bool,
    seed: int,
    lung_masks: dict[str, np.ndarray] | None = None,
    aux_datasets: Sequence[str] = (),
) -> Dataset:
    """The task's dataset: (input, label) for a classifier, (input, target mask) for a segmenter."""
    if spec.kind == "classification":
        return ClassificationData(
            rows, spec, cache, input_spec, augment=augment, seed=seed, lung_masks=lung_masks
        )
    return SegmentationData(
        rows, spec, cache, input_spec, augment=augment, seed=seed, aux_datasets=aux_datasets
    )
