"""Preprocessed-array cache: decode each source once, then train from memory-mapped NPY files.

Decoding a JPEG 2000 DICOM takes far longer than a training step on a small network, so the
reference project converted DICOM to NPY once. Here the conversion is a cache: an entry's key is
the sha256 of (the image file's content hash, the mask files' content hashes, the preprocessing
settings, the variant, a format version). Change the image, a mask or any setting and the key
changes; nothing is ever stale. Epochs after the first read no DICOM and no PNG.

Every network input is built with :func:`pipelines.preprocess.prepare_input`, the function the
production pipeline uses, so training and inference see the same pixels.

Variants of a classification input (the paper's shortcut check, data README):
``normal``; ``lungs_removed`` (lung pixels set to black before preprocessing: a model that still
scores well reads something other than the lungs); ``lungs_only_view`` (everything but the lungs
black).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.image import load_image
from pipelines.preprocess import InputSpec, prepare_input
from training.manifest import ManifestRow, file_sha256

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
VARIANTS = ("normal", "lungs_removed", "lungs_only_view")


def load_mask(spec: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A boolean mask from a manifest mask cell (``a.png|b.png`` = union), foreground > 127.

    V7 masks mark "Ignore" with 127: it is not lung. A mask whose size differs from the image
    is an error naming both, never a silent resize.
    """
    out: np.ndarray | None = None
    for part in spec.split("|"):
        with Image.open(part) as img:
            m = np.asarray(img.convert("L")) > 127
        if shape is not None and m.shape != shape:
            raise ValueError(f"mask {part} is {m.shape[1]}x{m.shape[0]}, its image is {shape[1]}x{shape[0]}")
        out = m if out is None else (out | m)
    if out is None:
        raise ValueError("empty mask specification")
    return out


@dataclass
class Source:
    pixels: np.ndarray
    lung_mask: np.ndarray | None
    ggo_mask: np.ndarray | None


def load_source(row: ManifestRow, *, lung_mask: np.ndarray | None = None) -> Source:
    """Decode the image of ``row`` and its masks on the image's own grid."""
    pixels = load_image(row.image_path).pixels
    lungs = (
        lung_mask
        if lung_mask is not None
        else (load_mask(row.lung_mask, pixels.shape) if row.lung_mask else None)
    )
    ggo = load_mask(row.ggo_mask, pixels.shape) if row.ggo_mask else None
    return Source(pixels=pixels, lung_mask=lungs, ggo_mask=ggo)


class ArrayCache:
    """NPY files under ``root/<key[:2]>/<key>.<name>.npy``, read back memory-mapped."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._mask_hashes: dict[str, str] = {}

    def _mask_hash(self, spec: str) -> str:
        if not spec:
            return ""
        if spec not in self._mask_hashes:
            self._mask_hashes[spec] = "+".join(file_sha256(p) for p in spec.split("|"))
        return self._mask_hashes[spec]

    def key(self, row: ManifestRow, settings: dict, *, uses_lungs: bool, uses_ggo: bool) -> str:
        content = row.content_sha256 or file_sha256(row.image_path)
        payload = {
            "format": CACHE_FORMAT,
            "image": content,
            "settings": settings,
            "lung_mask": self._mask_hash(row.lung_mask) if uses_lungs else "",
            "ggo_mask": self._mask_hash(row.ggo_mask) if uses_ggo else "",
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _paths(self, key: str, names: tuple[str, ...]) -> list[Path]:
        return [self.root / key[:2] / f"{key}.{n}.npy" for n in names]

    def get(self, key: str, names: tuple[str, ...]) -> list[np.ndarray] | None:
        paths = self._paths(key, names)
        if all(p.is_file() for p in paths):
            self.hits += 1
            return [np.load(p, mmap_mode="r") for p in paths]
        self.misses += 1
        return None

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        paths = self._paths(key, tuple(arrays))
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path, arr in zip(paths, arrays.values(), strict=True):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")
            np.save(tmp, np.ascontiguousarray(arr))
            tmp.replace(path)  # atomic: a reader never sees half a file (two DDP ranks may race)


def rows_with_input(
    rows: Sequence[ManifestRow], spec_dict: dict, lung_masks: dict[str, np.ndarray]
) -> list[ManifestRow]:
    """The rows a classifier can take: all of them, or in ``lungs_only`` mode those with a lung mask
    (the manifest's own, or one predicted for the image in ``lung_masks``)."""
    if spec_dict.get("mode", "whole_image") != "lungs_only":
        return list(rows)
    return [r for r in rows if r.lung_mask or r.image_path in lung_masks]


def classification_input(
    cache: ArrayCache,
    row: ManifestRow,
    spec_dict: dict,
    *,
    variant: str = "normal",
    lung_mask: np.ndarray | None = None,
) -> np.ndarray:
    """The (C, S, S) float32 network input of one image, cached.

    ``lung_mask`` overrides the manifest's (e.g. a mask predicted by a lungs bundle).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    spec = InputSpec.from_dict(spec_dict)
    uses_lungs = spec.mode == "lungs_only" or variant != "normal"
    settings = {
        "kind": "classification",
        "input": spec_dict,
        "variant": variant,
        "lung_override": None
        if lung_mask is None
        else hashlib.sha256(np.packbits(lung_mask).tobytes()).hexdigest(),
    }
    key = cache.key(row, settings, uses_lungs=uses_lungs, uses_ggo=False)
    hit = cache.get(key, ("image",))
    if hit is not None:
        return hit[0]
    src = load_source(row, lung_mask=lung_mask)
    pixels = src.pixels
    if uses_lungs and src.lung_mask is None:
        raise ValueError(
            f"{row.image_path}: needs a lung mask (mode {spec.mode}, variant {variant}) and has none"
        )
    if variant == "lungs_removed":
        pixels = np.where(src.lung_mask, 0.0, pixels).astype(np.float32)
    elif variant == "lungs_only_view":
        pixels = np.where(src.lung_mask, pixels, 0.0).astype(np.float32)
    array = prepare_input(pixels, spec, src.lung_mask).array.astype(np.float32)
    cache.put(key, {"image": array})
    return array


def segmentation_pair(
    cache: ArrayCache, row: ManifestRow, spec_dict: dict, target: str
) -> tuple[np.ndarray, np.ndarray]:
    """(C, S, S) float32 input and (1, S, S) uint8 target mask in the model grid, cached.

    ``target`` is ``lungs`` or ``ggo``; the geometry is the whole-image letterbox of the input.
    """
    spec = InputSpec.from_dict(spec_dict)
    if spec.mode != "whole_image":
        raise ValueError("segmentation inputs are whole-image")
    key = cache.key(
        row,
        {"kind": "segmentation", "input": spec_dict, "target": target},
        uses_lungs=target == "lungs",
        uses_ggo=target == "ggo",
    )
    hit = cache.get(key, ("image", "mask"))
    if hit is not None:
        return hit[0], hit[1]
    src = load_source(row)
    mask = src.lung_mask if target == "lungs" else src.ggo_mask
    if mask is None:
        raise ValueError(f"{row.image_path}: no {target} mask in the manifest")
    prepared = prepare_input(src.pixels, spec)
    model_mask = prepared.geometry.mask_to_model(mask)[None].astype(np.uint8)
    cache.put(key, {"image": prepared.array.astype(np.float32), "mask": model_mask})
    return prepared.array, model_mask
