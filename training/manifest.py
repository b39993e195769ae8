"""The one manifest every dataset adapter writes and every trainer reads.

A manifest is a CSV with one row per image (TorchXRayVision's idea of a metadata table aligned
row by row with the images, with "unknown" kept distinct from "negative"). Paths are absolute,
so manifests from different datasets merge by concatenation. ``content_sha256`` is the hash of
the image file's bytes; together with ``patient_id`` and ``image_key`` (the identity of the
underlying picture in the collection it was first published in, e.g. ``ieee8023:<filename>``)
it lets the leakage check find the same patient or the same picture in two splits, also across
datasets that re-publish each other's images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from training.errors import ManifestError

log = logging.getLogger(__name__)

PROJECTIONS = ("frontal", "lateral", "")
SPLITS = ("train", "validation", "test", "")


@dataclass
class BoxLabel:
    """An axis-aligned box on the image's own pixel grid (x right, y down, x1/y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty or inverted box {self}")


@dataclass
class ManifestRow:
    """One image with everything known about it; empty string means unknown."""

    image_path: str
    dataset: str
    patient_id: str
    study_id: str = ""
    view: str = ""  # as published: PA, AP, AP Supine, L, LL, ...
    projection: str = ""  # frontal | lateral | "" (unknown)
    covid: str = ""  # "1", "0" or "" (unknown)
    findings: list[str] = field(default_factory=list)
    lung_mask: str = ""
    ggo_mask: str = ""
    boxes: list[BoxLabel] = field(default_factory=list)
    license: str = ""
    source: str = ""  # hospital / collection inside a dataset; per-source metrics group by it
    image_key: str = ""  # identity of the picture where it was first published
    content_sha256: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        if not self.image_path:
            raise ValueError("image_path is empty")
        if not self.patient_id:
            raise ValueError(f"patient_id is empty for {self.image_path}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection {self.projection!r} of {self.image_path} not in {PROJECTIONS}")
        if self.covid not in ("1", "0", ""):
            raise ValueError(f"covid {self.covid!r} of {self.image_path} is not 1, 0 or empty")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} of {self.image_path} not in {SPLITS}")
        if not self.source:
            self.source = self.dataset

    def to_csv(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "findings":
                out[f.name] = "|".join(value)
            elif f.name == "boxes":
                out[f.name] = json.dumps([asdict(b) for b in value]) if value else ""
            else:
                out[f.name] = str(value)
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow))
REQUIRED_COLUMNS = ("image_path", "dataset", "patient_id")


def _row_from_csv(record: dict[str, str], where: str) -> ManifestRow:
    values: dict[str, object] = {k: (record.get(k) or "") for k in COLUMNS}
    values["findings"] = [f for f in str(values["findings"]).split("|") if f]
    raw_boxes = str(values["boxes"])
    try:
        values["boxes"] = [BoxLabel(**b) for b in json.loads(raw_boxes)] if raw_boxes else []
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{where}: column 'boxes' is not a JSON list of boxes: {exc}") from exc
    try:
        return ManifestRow(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from exc


def read_manifest(path: Path | str) -> list[ManifestRow]:
    """Read a manifest CSV; a missing column or a bad value names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; found {header}")
        return [_row_from_csv(rec, f"{path}:{i + 2}") for i, rec in enumerate(reader)]


def write_manifest(rows: Iterable[ManifestRow], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_csv())
    tmp.replace(path)
    return path


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_shas(path: Path | str) -> set[str]:
    """The file's sha256, plus the sha256 of its rows as :func:`write_manifest` writes them today when
    the file has columns this code does not know and they are blank in every row.

    A manifest written while an experimental column existed (``ggo_labelled``) is then checked against
    a bundle's recorded ``manifest_sha256`` as the same data it is.
    """
    shas = {file_sha256(path)}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        records = list(reader)
        header = list(reader.fieldnames or [])
    extra = [c for c in header if c not in COLUMNS]
    if extra and set(COLUMNS) <= set(header) and not any(r.get(c) for r in records for c in extra):
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        shas.add(hashlib.sha256(buf.getvalue().encode("utf-8")).hexdigest())
    return shas


def merge_manifests(parts: Sequence[Sequence[ManifestRow]]) -> list[ManifestRow]:
    """Concatenate manifests; the same file listed twice is kept once (first wins)."""
    seen: set[str] = set()
    merged: list[ManifestRow] = []
    for part in parts:
        for row in part:
            if row.image_path in seen:
                log.warning("%s listed twice; keeping the first row", row.image_path)
                continue
            seen.add(row.image_path)
            merged.append(row)
    return merged


def summary_table(rows: Sequence[ManifestRow]) -> str:
    """Counts per dataset x (projection, COVID label, split) and the most common findings."""
    by_ds: dict[str, Counter[str]] = {}
    for row in rows:
        c = by_ds.setdefault(row.dataset, Counter())
        c["images"] += 1
        c["proj:" + (row.projection or "?")] += 1
        c["covid:" + {"1": "pos", "0": "neg", "": "?"}[row.covid]] += 1
        c["lung_mask"] += bool(row.lung_mask)
        c["ggo_mask"] += bool(row.ggo_mask)
        c["boxes"] += bool(row.boxes)
        if row.split:
            c["split:" + row.split] += 1
    patients = Counter(r.dataset for r in {(r.dataset, r.patient_id): r for r in rows}.values())
    cols = [
        "images",
        "patients",
        "proj:frontal",
        "proj:lateral",
        "proj:?",
        "covid:pos",
        "covid:neg",
        "covid:?",
        "lung_mask",
        "ggo_mask",
        "boxes",
    ]
    if any(r.split for r in rows):
        cols += ["split:train", "split:validation", "split:test"]
    names = sorted(by_ds) + ["TOTAL"]
    total: Counter[str] = sum(by_ds.values(), Counter())
    total["patients"] = sum(patients.values())
    width = max([len(n) for n in names] + [7])
    # two header lines: the group (proj, covid, split) above the value (frontal, pos, train, ...)
    groups = " ".join([" " * width] + [f"{c.split(':')[0] if ':' in c else '':>10}" for c in cols])
    values = " ".join([f"{'dataset':<{width}}"] + [f"{c.split(':')[-1]:>10}" for c in cols])
    lines = [groups, values]
    for name in names:
        c = total if name == "TOTAL" else by_ds[name]
        if name != "TOTAL":
            c = Counter(c)
            c["patients"] = patients[name]
        lines.append(" ".join([f"{name:<{width}}"] + [f"{c.get(col, 0):>10}" for col in cols]))
    findings = Counter(f for r in rows for f in r.findings)
    if findings:
        lines.append("findings: " + ", ".join(f"{k} {v}" for k, v in findings.most_common(12)))
    return "\n".join(lines)
