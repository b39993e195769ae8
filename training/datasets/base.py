"""Helpers every dataset adapter uses to read a published layout and fail loudly when it differs.

An adapter must never guess silently: a missing label file, a renamed column or an image listed
in a label table but absent on disk raises :class:`DatasetLayoutError` naming the file and the
column, so a researcher sees at once which part of their copy differs from the published one.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from training.errors import DatasetLayoutError
from training.manifest import ManifestRow, file_sha256

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: expected the {what} folder here (not found)")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: expected the {what} here (not found)")
    return path


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of several published names (datasets rename label files between releases)."""
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise DatasetLayoutError(f"{root}: none of {list(candidates)} found (the {what})")


def read_table(
    path: Path, required: Sequence[str], *, delimiter: str | None = None, skip_comment_lines: bool = False
) -> list[dict[str, str]]:
    """Read a CSV/TSV label table; raise naming the file and every missing column.

    The delimiter is taken from the suffix (``.tsv`` is tab) unless given; a BOM is dropped.
    """
    require_file(path, "label table")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as fh:
        lines: Iterable[str] = fh
        if skip_comment_lines:
            lines = (line for line in fh if not line.startswith("#"))
        reader = csv.DictReader(lines, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetLayoutError(
                f"{path}: missing column(s) {missing} (delimiter {delimiter!r}); found columns {header[:30]}"
            )
        rows = []
        for rec in reader:
            rows.append({(k or "").strip(): (v or "").strip() for k, v in rec.items() if k is not None})
        return rows


def cell(record: dict[str, str], column: str, path: Path, line: int) -> str:
    """A required, non-empty cell; the error names file, line and column."""
    value = record.get(column, "")
    if value == "":
        raise DatasetLayoutError(f"{path}:{line}: column {column!r} is empty")
    return value


def projection_from_view(view: str) -> str:
    """Map a published view string to frontal/lateral ("" when unknown).

    DICOM View Position (0018,5101) uses AP, PA, LL, RL (PS3.3 C.8.11.5); datasets add "L",
    "AP Supine", "AP_horizontal", "Lateral".
    """
    v = view.strip().upper().replace("_", " ")
    if not v:
        return ""
    if v in ("L", "LL", "RL", "LAT", "LATERAL", "LLD", "RLD") or v.startswith("LAT"):
        return "lateral"
    if (
        v.startswith("AP")
        or v.startswith("PA")
        or v in ("FRONTAL", "AP SUPINE", "POSTEROANTERIOR", "ANTEROPOSTERIOR")
    ):
        return "frontal"
    return ""


def finish(rows: list[ManifestRow], *, hash_images: bool = True, workers: int = 4) -> list[ManifestRow]:
    """Check that every listed file exists and fill ``content_sha256``.

    A missing image or mask is an error naming the file: a partial download must not turn
    silently into a smaller, differently balanced dataset.
    """
    specs = [spec for r in rows for spec in (r.image_path, r.lung_mask, r.ggo_mask)]
    listed = [p for spec in specs for p in spec.split("|") if p]
    missing = [p for p in listed if not Path(p).is_file()]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} file(s) listed in the labels are missing on disk, first: {missing[:3]}"
        )
    if hash_images:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for row, digest in zip(rows, pool.map(file_sha256, [r.image_path for r in rows]), strict=True):
                row.content_sha256 = digest
    log.info("scanned %d images", len(rows))
    return rows


SHARED_LABEL_COLUMNS = (
    "file", "patient_id", "covid", "finding", "view", "projection", "license", "orig_path", "lung_mask",
)


def scan_shared_labels(
    root: Path, dataset: str, image_key: Callable[[str], str], *, hash_images: bool = True
) -> list[ManifestRow]:
    """Read a ``../shared/data`` folder whose ``labels.csv`` has :data:`SHARED_LABEL_COLUMNS`.

    ``image_key`` turns the ``orig_path`` column into the picture's identity where it was first
    published, which is what links copies across datasets.
    """
    root = Path(root).resolve()
    require_dir(root / "images_512", "images_512")
    table = root / "labels.csv"
    rows = []
    for i, rec in enumerate(read_table(table, SHARED_LABEL_COLUMNS), start=2):
        rows.append(
            ManifestRow(
                image_path=str(root / cell(rec, "file", table, i)),
                dataset=dataset,
                patient_id=cell(rec, "patient_id", table, i),
                view=rec["view"],
                projection=rec["projection"],
                covid=rec["covid"],
                findings=[f for f in [rec["finding"]] if f and f != "No Finding"],
                lung_mask=str(root / rec["lung_mask"]) if rec["lung_mask"] else "",
                license=rec["license"],
                image_key=image_key(rec["orig_path"]),
            )
        )
    return finish(rows, hash_images=hash_images)
