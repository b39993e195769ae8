"""Patient-level seeded splits and the leakage check, with planted leaks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import scan_dataset
from training.errors import LeakageError
from training.manifest import ManifestRow, merge_manifests
from training.splits import (
    assign_splits,
    check_leakage,
    near_duplicate_leaks,
    near_duplicate_pairs,
    thumbnails,
)


def _rows(n_patients: int = 60) -> list[ManifestRow]:
    rows = []
    for p in range(n_patients):
        for k in range(1 + p % 3):
            rows.append(
                ManifestRow(
                    image_path=f"/d/{p}_{k}.png",
                    dataset="a" if p % 2 else "b",
                    patient_id=f"p{p}",
                    covid="1" if p % 4 == 0 else "0",
                    content_sha256=f"h{p}_{k}",
                )
            )
    return rows


def test_split_is_patient_level_seeded_and_stratified() -> None:
    rows = assign_splits(_rows(), seed=7)
    again = assign_splits(_rows(), seed=7)
    assert [r.split for r in rows] == [r.split for r in again]
    assert [r.split for r in rows] != [r.split for r in assign_splits(_rows(), seed=8)]
    per_patient = {}
    for r in rows:
        per_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in per_patient.values())
    counts = Counter(r.split for r in rows)
    assert counts["train"] > counts["validation"] > 0 and counts["test"] > 0
    for split in ("train", "validation", "test"):  # every split has positives and both datasets
        members = [r for r in rows if r.split == split]
        assert {r.covid for r in members} == {"0", "1"} and {r.dataset for r in members} == {"a", "b"}


def test_planted_leaks_are_caught() -> None:
    rows = assign_splits(_rows(), seed=1)
    train = next(r for r in rows if r.split == "train")
    test = next(r for r in rows if r.split == "test")
    # same patient in two splits
    test.patient_id = train.patient_id
    with pytest.raises(LeakageError, match="patient_id"):
        check_leakage(rows)
    rows = assign_splits(_rows(), seed=1)
    train = next(r for r in rows if r.split == "train")
    test = next(r for r in rows if r.split == "test")
    test.content_sha256 = train.content_sha256  # identical bytes under another patient id
    with pytest.raises(LeakageError, match="content_sha256") as info:
        check_leakage(rows)
    assert len(info.value.leaks) == 1
    train.image_key = test.image_key = "ieee8023:x.jpg"  # the same picture re-encoded elsewhere
    with pytest.raises(LeakageError, match="image_key"):
        check_leakage(rows)


def test_links_keep_copies_together_when_splitting() -> None:
    rows = _rows()
    rows[0].content_sha256 = rows[-1].content_sha256  # one picture under two patients
    rows[5].image_key = rows[-7].image_key = "ieee8023:same.jpg"
    for seed in range(5):
        assign_splits(rows, seed=seed)  # runs check_leakage itself
        assert rows[0].split == rows[-1].split and rows[5].split == rows[-7].split


@pytest.fixture(scope="module")
def ieee_and_gb(shared_data: Path) -> list[ManifestRow]:
    return merge_manifests(
        [
            scan_dataset("shared_ieee8023", shared_data / "ieee8023_covid_cxr"),
            scan_dataset("shared_generalblockchain", shared_data / "generalblockchain_cxr_seg"),
        ]
    )


def test_generalblockchain_never_leaks_against_ieee8023(ieee_and_gb: list[ManifestRow]) -> None:
    rows = assign_splits([ManifestRow(**vars(r)) for r in ieee_and_gb], seed=3)
    ieee_split = {r.image_key: r.split for r in rows if r.dataset == "ieee8023"}
    gb = [r for r in rows if r.dataset == "generalblockchain" and r.image_key in ieee_split]
    assert len(gb) == 97 and all(ieee_split[r.image_key] == r.split for r in gb)


def test_near_duplicate_check_catches_an_unlabelled_copy(
    ieee_and_gb: list[ManifestRow], tmp_path: Path
) -> None:
    """A GeneralBlockchain picture re-encoded and renamed, with no id linking it, is still caught."""
    gb = next(r for r in ieee_and_gb if r.dataset == "generalblockchain" and r.ggo_mask)
    twin = next(r for r in ieee_and_gb if r.dataset == "ieee8023" and r.image_key == gb.image_key)
    copy = tmp_path / "renamed.jpg"
    Image.open(gb.image_path).convert("L").resize((300, 330)).save(copy, quality=80)
    others = [r for r in ieee_and_gb if r.dataset == "ieee8023"][:40]
    planted = ManifestRow(image_path=str(copy), dataset="elsewhere", patient_id="other_1", split="test")
    rows = [ManifestRow(**{**vars(r), "split": "train"}) for r in others + [twin]] + [planted]
    check_leakage(rows)  # no identifier links them...
    leaks = near_duplicate_leaks(rows)
    assert [(rows[a].image_path, rows[b].image_path) for a, b, _ in leaks] == [(twin.image_path, str(copy))]


@pytest.mark.slow  # near-duplicate search over the real collection: ~6 s
def test_ieee8023_has_unlinked_duplicates_that_splitting_links(ieee_and_gb: list[ManifestRow]) -> None:
    ieee = [r for r in ieee_and_gb if r.dataset == "ieee8023"]
    pairs = near_duplicate_pairs(thumbnails(ieee))
    cross_patient = [(a, b) for a, b, _ in pairs if ieee[a].patient_id != ieee[b].patient_id]
    assert len(cross_patient) >= 5  # e.g. patients 97/178 share four pictures
    rows = assign_splits(
        [ManifestRow(**vars(r)) for r in ieee], seed=0, extra_links=[(a, b) for a, b, _ in pairs]
    )
    assert not near_duplicate_leaks(rows, thumbs=thumbnails(rows))


def test_thumbnails_are_unit_norm(ieee_and_gb: list[ManifestRow]) -> None:
    t = thumbnails(ieee_and_gb[:3])
    assert t.shape == (3, 1024) and np.allclose(np.linalg.norm(t, axis=1), 1.0)
