"""Distributed data parallel without code changes: the same trainer under ``torchrun``.

``torchrun --nproc_per_node N -m training.run CONFIG`` sets RANK/WORLD_SIZE/LOCAL_RANK; the
trainers call :func:`init` and get a :class:`DistContext`. One process (no torchrun) is a world
of size 1 and touches no process group. Backend: NCCL on GPUs, gloo on CPU (tested with two
gloo processes on CPU). Rank 0 alone validates, writes checkpoints, logs and the bundle; the
others wait at a barrier, so every rank sees the same "best epoch" decision via a broadcast.

Sampling: every rank draws the same seeded epoch order (shuffled or weighted) and takes every
N-th index, which is what ``DistributedSampler`` does for plain shuffling and extends it to
class- and source-balanced sampling.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

BARRIER_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast_flag(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        t = torch.tensor([1 if value else 0], dtype=torch.int64)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    def mean(self, value: float) -> float:
        """Mean of a scalar over ranks (training loss)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size


def init(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes (or stay single-process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
        log.info("rank %d/%d joined (%s)", rank, world, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class EpochSampler(Sampler[int]):
    """Seeded per-epoch order, optionally weighted (with replacement), sharded over ranks."""

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty training set")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        total = num_samples or n
        self.per_rank = (total + world_size - 1) // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        total = self.per_rank * self.world
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
            order = order.repeat((total + self.n - 1) // self.n)[:total]
        else:
            order = torch.multinomial(self.weights, total, replacement=True, generator=g)
        return iter(order[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank
