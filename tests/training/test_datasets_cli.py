"""``cxr-node datasets`` on real folders and miniature trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from minitrees import EXPECTED

from node.cli.main import main
from training.manifest import read_manifest


def test_scan_merge_split_check(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert (
        main(
            [
                "datasets",
                "scan",
                "shared_kermany_v7",
                str(shared_data / "kermany_pediatric_v7"),
                "--out",
                str(a),
            ]
        )
        == 0
    )
    chexpert = EXPECTED["chexpert"][0](tmp_path / "chexpert")
    assert main(["datasets", "scan", "chexpert", str(chexpert), "--out", str(b)]) == 0
    merged = tmp_path / "all.csv"
    assert main(["datasets", "merge", str(a), str(b), "--out", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "kermany_pediatric" in out and "chexpert" in out and "TOTAL" in out and "lateral" in out
    assert len(read_manifest(merged)) == 160 + 3
    split = tmp_path / "split.csv"
    assert main(["datasets", "split", str(merged), "--out", str(split), "--seed", "4"]) == 0
    assert {r.split for r in read_manifest(split)} == {"train", "validation", "test"}
    assert main(["datasets", "check", str(split), "--near-duplicates"]) == 0
    assert "no leakage" in capsys.readouterr().out


def test_scan_errors_exit_2_and_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = EXPECTED["rsna_pneumonia"][0](tmp_path / "rsna")
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y\n")
    assert main(["datasets", "scan", "rsna_pneumonia", str(root), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "stage_2_train_labels.csv" in err and "Target" in err
    assert not (tmp_path / "x.csv").exists()


def test_check_fails_on_a_leak(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.datasets import scan_dataset
    from training.manifest import write_manifest

    rows = scan_dataset("shared_openist", shared_data / "openist_normal_lungmask")[:4]
    for row, split in zip(rows, ["train", "train", "test", "test"], strict=True):
        row.split = split
    rows[2].content_sha256 = rows[0].content_sha256
    path = write_manifest(rows, tmp_path / "leaky.csv")
    assert main(["datasets", "check", str(path)]) == 1
    assert "content_sha256" in capsys.readouterr().err
