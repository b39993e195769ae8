"""Patient-level, stratified, seeded splits and the leakage check that guards them.

Honest evaluation needs every picture of a patient, and every copy of a picture, on one side of
the split. Rows are therefore grouped with a union-find over three links: the patient id, the
file's content hash, and the ``image_key`` (the picture's identity where it was first published,
which links re-encoded copies such as the GeneralBlockchain set's ieee8023 images). Whole groups
are then dealt to train/validation/test, per stratum (dataset x label), by largest deficit, so
each split gets its share of every dataset and class.

:func:`check_leakage` re-checks a finished manifest and raises :class:`LeakageError`;
:func:`near_duplicate_leaks` adds a pixel-level check (32x32 thumbnail correlation, the data
README's dedup criterion) for copies no identifier links.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.image import load_image
from training.errors import LeakageError
from training.manifest import ManifestRow

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
LINK_COLUMNS = ("patient_id", "content_sha256", "image_key")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def linked_groups(
    rows: Sequence[ManifestRow], extra_links: Sequence[tuple[int, int]] = ()
) -> list[list[int]]:
    """Indices of rows that must stay together (same patient, same bytes or same picture).

    ``extra_links`` are further pairs of row indices to keep together (near-duplicate pictures).
    """
    uf = _UnionFind(len(rows))
    for a, b in extra_links:
        uf.union(a, b)
    for column in LINK_COLUMNS:
        first: dict[str, int] = {}
        for i, row in enumerate(rows):
            key = getattr(row, column)
            if not key:
                continue
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        groups[uf.find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def covid_stratum(rows: Sequence[ManifestRow]) -> str:
    """Group label for stratification: positive if any picture is positive."""
    labels = {r.covid for r in rows}
    return "1" if "1" in labels else ("0" if "0" in labels else "")


def assign_splits(
    rows: Sequence[ManifestRow],
    *,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratum: Callable[[Sequence[ManifestRow]], str] = covid_stratum,
    extra_links: Sequence[tuple[int, int]] = (),
) -> list[ManifestRow]:
    """Set ``row.split`` for every row; patient-level, stratified by dataset x ``stratum``, seeded.

    The same rows, fractions and seed always give the same split (groups are ordered by their
    first row, shuffled with ``random.Random(seed)``).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups = linked_groups(rows, extra_links)
    strata: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for g in groups:
        members = [rows[i] for i in g]
        strata[(members[0].dataset, stratum(members))].append(g)
    rng = random.Random(seed)
    for key in sorted(strata):
        stratum_groups = strata[key]
        rng.shuffle(stratum_groups)
        total = sum(len(g) for g in stratum_groups)
        counts = [0, 0, 0]
        for g in stratum_groups:
            deficits = [fractions[k] * total - counts[k] for k in range(3)]
            k = max(range(3), key=lambda j: (deficits[j], -j))
            counts[k] += len(g)
            for i in g:
                rows[i].split = SPLIT_NAMES[k]
    check_leakage(rows)
    return list(rows)


def check_leakage(rows: Sequence[ManifestRow]) -> None:
    """Raise :class:`LeakageError` when a patient, a file's bytes or a picture is in two splits."""
    leaks: list[str] = []
    for column in LINK_COLUMNS:
        where: dict[str, set[str]] = defaultdict(set)
        examples: dict[str, str] = {}
        for row in rows:
            key = getattr(row, column)
            if key and row.split:
                where[key].add(row.split)
                examples.setdefault(key, row.image_path)
        for key, splits in sorted(where.items()):
            if len(splits) > 1:
                leaks.append(f"{column} {key} in {'+'.join(sorted(splits))} (e.g. {examples[key]})")
    if leaks:
        raise LeakageError(f"{len(leaks)} leak(s) across splits; first: {leaks[:5]}", leaks)


def thumbnail(path: str | Path, size: int = 32) -> np.ndarray:
    """A zero-mean, unit-norm ``size x size`` grey thumbnail (area averaging) of an image file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".dcm" or not suffix:
        pixels = load_image(path).pixels
        img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    else:
        img = Image.open(path).convert("L")
    arr = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32).ravel()
    arr -= arr.mean()
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 else arr


def thumbnails(rows: Sequence[ManifestRow]) -> np.ndarray:
    return np.stack([thumbnail(r.image_path) for r in rows]) if rows else np.zeros((0, 1024), np.float32)


def near_duplicate_pairs(thumbs: np.ndarray, threshold: float = 0.97) -> list[tuple[int, int, float]]:
    """All pairs (i < j) of thumbnails correlating above ``threshold``.

    In ieee8023 alone this finds pictures published twice under two patient ids (e.g. 97/178,
    137/202, 192/196) that the metadata does not say are one person: splits must link them.
    """
    pairs: list[tuple[int, int, float]] = []
    block = 2048
    for start in range(0, len(thumbs), block):
        corr = thumbs[start : start + block] @ thumbs.T
        for a, b in zip(*np.nonzero(corr > threshold), strict=True):
            if start + int(a) < int(b):
                pairs.append((start + int(a), int(b), float(corr[a, b])))
    return pairs


def near_duplicate_leaks(
    rows: Sequence[ManifestRow], *, threshold: float = 0.97, thumbs: np.ndarray | None = None
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, r) of rows in different splits whose thumbnails correlate above ``threshold``.

    Catches copies of one picture re-encoded at another size under another name, which neither
    hash nor identifier links. Cost: one 32x32 decode per image and an N x N product.
    """
    idx = [i for i, r in enumerate(rows) if r.split]
    thumbs = thumbnails([rows[i] for i in idx]) if thumbs is None else thumbs[idx]
    return [
        (idx[a], idx[b], r)
        for a, b, r in near_duplicate_pairs(thumbs, threshold)
        if rows[idx[a]].split != rows[idx[b]].split
    ]


def split_counts(rows: Sequence[ManifestRow]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {s: defaultdict(int) for s in SPLIT_NAMES}
    for r in rows:
        if r.split:
            out[r.split]["images"] += 1
            out[r.split][f"covid={r.covid or '?'}"] += 1
    return {k: dict(v) for k, v in out.items()}
