"""Device choice and the inference context shared by every task.

CUDA when present (or when forced), else CPU; ``torch.inference_mode`` for every forward pass that
needs no gradient; bf16 autocast on CUDA where the GPU supports it, fp16 otherwise, never on CPU
(CPU autocast would change results between machines for little gain).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pipelines.errors import PipelineError


def resolve_device(device: str | None = None) -> str:
    """``None`` -> "cuda" when available else "cpu"; "cuda" without a GPU is an error, not a fallback."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {device!r} requested but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise PipelineError(f"unknown device {device!r} (cpu|cuda|cuda:N)")
    return device


@contextlib.contextmanager
def inference(device: str) -> Iterator[None]:
    """``torch.inference_mode`` plus, on CUDA, autocast to bf16 (or fp16 where bf16 is unsupported)."""
    with torch.inference_mode():
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast(device_type="cuda", dtype=dtype):
                yield
        else:
            yield


def freeze_loaded_heap() -> int:
    """Collect, then move every object alive now out of the cyclic collector's reach (``gc.freeze``).

    Call once per process after the models are loaded. What is alive then (about 590,000 objects:
    torch, MONAI, ultralytics, pydicom's and highdicom's standard tables, the networks) lives as
    long as the process, yet every full collection walked all of it again: 310 ms on a 2-core
    Xeon, about once per six images' result writing (pydicom and highdicom allocate many small
    objects), 35-40 ms per image on average. Garbage is collected first so that no unreachable
    cycle is frozen with the rest. Returns the number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def stack(arrays: Sequence[np.ndarray], device: str) -> torch.Tensor:
    """(C, S, S) numpy inputs -> one (N, C, S, S) float32 tensor on ``device``."""
    return torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False)).to(device)


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(positive label) per row: sigmoid of a single logit, softmax[:, 1] of two (networks.py)."""
    logits = logits.float()
    if logits.ndim == 1 or logits.shape[1] == 1:
        return torch.sigmoid(logits.reshape(-1))
    return torch.softmax(logits, dim=1)[:, 1]


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1|2, H, W) segmentation logits -> (N, H, W) foreground probability."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + max(1, size)))
