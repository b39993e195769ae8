"""The adapters of the five real folders in ../shared/data, on the real data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training.datasets import SHARED_FOLDERS, scan_dataset
from training.manifest import merge_manifests, summary_table


@pytest.fixture(scope="module")
def shared_rows(shared_data: Path) -> dict[str, list]:
    return {
        adapter: scan_dataset(adapter, shared_data / folder) for folder, adapter in SHARED_FOLDERS.items()
    }


def test_counts_match_the_data_readme(shared_rows: dict[str, list]) -> None:
    ieee = shared_rows["shared_ieee8023"]
    assert len(ieee) == 653 - 5  # five pictures are listed twice (patients 285/339, 287/340)
    frontal = Counter(r.covid for r in ieee if r.projection == "frontal")
    lateral = Counter(r.covid for r in ieee if r.projection == "lateral")
    # README: frontal 427+/104-, lateral 24/20 counted per CSV row; the five pictures listed twice
    # are four frontal and one lateral COVID-negative image, each kept once here
    assert (frontal["1"], frontal["0"], lateral["1"], lateral["0"]) == (427, 100, 24, 19)
    assert sum(bool(r.lung_mask) for r in ieee) == 427
    assert len(shared_rows["shared_generalblockchain"]) == 100
    assert sum(bool(r.ggo_mask) for r in shared_rows["shared_generalblockchain"]) == 93
    nih = shared_rows["shared_nih_talo"]
    assert len(nih) == 1000 and len({r.patient_id for r in nih}) == 682 and {r.covid for r in nih} == {"0"}
    assert sum(len(r.boxes) for r in nih) == 205 + 49
    assert len(shared_rows["shared_kermany_v7"]) == 160 and all(
        r.lung_mask for r in shared_rows["shared_kermany_v7"]
    )
    assert len(shared_rows["shared_openist"]) == 274


def test_duplicate_patient_ids_are_merged(shared_rows: dict[str, list]) -> None:
    ieee = {Path(r.image_path).name: r for r in shared_rows["shared_ieee8023"]}
    assert ieee["000001-24.png"].patient_id == ieee["000006-17.png"].patient_id == "ieee8023_285"
    assert ieee["000001-27.png"].patient_id == "ieee8023_287"
    assert not any(r.patient_id in ("ieee8023_339", "ieee8023_340") for r in shared_rows["shared_ieee8023"])


def test_generalblockchain_links_to_ieee8023(shared_rows: dict[str, list]) -> None:
    ieee_keys = {r.image_key: r.patient_id for r in shared_rows["shared_ieee8023"]}
    gb = shared_rows["shared_generalblockchain"]
    linked = [r for r in gb if r.image_key in ieee_keys]
    assert len(linked) == 97
    assert all(ieee_keys[r.image_key] == r.patient_id for r in linked)
    lung = next(r.lung_mask for r in gb if r.lung_mask)
    assert lung.count("|") == 1 and "left_lung" in lung and "right_lung" in lung


def test_boxes_are_on_the_image_grid(shared_rows: dict[str, list]) -> None:
    from PIL import Image

    row = next(r for r in shared_rows["shared_nih_talo"] if r.boxes)
    w, h = Image.open(row.image_path).size
    assert all(0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h for b in row.boxes)


def test_merged_summary_table(shared_rows: dict[str, list]) -> None:
    merged = merge_manifests(list(shared_rows.values()))
    table = summary_table(merged)
    assert "TOTAL" in table and "ieee8023" in table and "generalblockchain" in table
    total = next(line for line in table.splitlines() if line.startswith("TOTAL")).split()
    assert int(total[1]) == len(merged) == 648 + 100 + 1000 + 160 + 274
