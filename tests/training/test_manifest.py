"""Manifest CSV round trip and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.errors import ManifestError
from training.manifest import BoxLabel, ManifestRow, merge_manifests, read_manifest, write_manifest


def _row(i: int, **kw: object) -> ManifestRow:
    return ManifestRow(image_path=f"/data/{i}.png", dataset="d", patient_id=f"p{i}", **kw)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    rows = [
        _row(
            1,
            covid="1",
            projection="frontal",
            findings=["COVID-19", "ARDS"],
            boxes=[BoxLabel(1, 2, 30.5, 40, "Lung Opacity")],
            lung_mask="/m/a.png|/m/b.png",
            split="test",
        ),
        _row(2),
    ]
    back = read_manifest(write_manifest(rows, tmp_path / "m.csv"))
    assert back == rows
    assert back[1].source == "d"  # source defaults to the dataset


def test_bad_values_name_file_line_and_column(tmp_path: Path) -> None:
    path = write_manifest([_row(1), _row(2)], tmp_path / "m.csv")
    text = path.read_text().splitlines()
    header = text[0].split(",")
    cells = text[2].split(",")
    cells[header.index("covid")] = "maybe"
    path.write_text("\n".join([text[0], text[1], ",".join(cells)]) + "\n")
    with pytest.raises(ManifestError, match=r"m\.csv:3: covid 'maybe'"):
        read_manifest(path)
    (tmp_path / "x.csv").write_text("path,dataset\n/a.png,d\n")
    with pytest.raises(ManifestError, match=r"x\.csv: missing column\(s\) \['image_path', 'patient_id'\]"):
        read_manifest(tmp_path / "x.csv")


def test_merge_keeps_a_file_once() -> None:
    merged = merge_manifests([[_row(1), _row(2)], [_row(2, covid="1"), _row(3)]])
    assert [r.image_path for r in merged] == ["/data/1.png", "/data/2.png", "/data/3.png"]
    assert merged[1].covid == ""


def test_rows_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="projection"):
        _row(1, projection="oblique")
    with pytest.raises(ValueError, match="patient_id is empty"):
        ManifestRow(image_path="/a.png", dataset="d", patient_id="")
    with pytest.raises(ValueError, match="empty or inverted box"):
        BoxLabel(10, 10, 5, 20, "x")


def test_a_manifest_with_a_blank_unknown_column_also_has_its_sha_without_it(tmp_path: Path) -> None:
    """A manifest written with a column this code no longer has, blank in every row, is the same data."""
    import csv

    from training.manifest import COLUMNS, file_sha256, manifest_shas

    rows = [_row(1, split="train"), _row(2, split="test")]
    path = write_manifest(rows, tmp_path / "m.csv")
    assert manifest_shas(path) == {file_sha256(path)}

    def with_column(name: str, value: str) -> Path:
        out = tmp_path / f"{name}-{bool(value)}.csv"
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*COLUMNS, name])
            writer.writeheader()
            writer.writerows({**r.to_csv(), name: value} for r in rows)
        return out

    blank = with_column("ggo_labelled", "")
    assert file_sha256(blank) != file_sha256(path)
    assert manifest_shas(blank) == {file_sha256(blank), file_sha256(path)}
    filled = with_column("ggo_labelled", "/m/zones.png")
    assert manifest_shas(filled) == {file_sha256(filled)}  # that column held data: not the same manifest
