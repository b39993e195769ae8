"""training.recipes.ggo_head: how its images are labelled and split, on constructed records and a miniature
nih_cxr14_talo folder (no model runs; the real run is in the GGO segmentation card)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from minitrees import png, write_csv

from training.ggo_measure import normal_scores
from training.recipes.ggo_head import NEGATIVE, POSITIVE, kind, nih_opacity_figures, nih_opacity_rows

LICENSE = "NIH ChestX-ray14"


def _nih_folder(root: Path) -> Path:
    """Four NIH images: a "No Finding" one with an RSNA Lung Opacity box (patient 1, already split), a second
    boxed one of patient 1, a boxed "Pneumonia" one of a new patient 2, and an unboxed "Pneumonia" one."""
    folder = root / "nih_cxr14_talo"
    images = [("00000001_000.png", "nih_1", "No Finding"), ("00000001_001.png", "nih_1", "Pneumonia"),
              ("00000002_000.png", "nih_2", "Pneumonia"), ("00000003_000.png", "nih_3", "Pneumonia")]
    for seed, (name, _, _) in enumerate(images):
        png(folder / "images_512" / name, seed)
    header = ["file", "patient_id", "covid", "finding", "view", "projection", "license"]
    write_csv(folder / "labels.csv", header,
              [[f"images_512/{name}", pid, "0", finding, "PA", "frontal", LICENSE]
               for name, pid, finding in images])
    write_csv(folder / "annotations" / "rsna_opacity_boxes.csv", ["file", "x512", "y512", "w512", "h512"],
              [[f"images_512/{name}", 2, 2, 5, 5] for name in ("00000001_000.png", "00000001_001.png",
                                                             "00000002_000.png", "00000002_000.png")])
    return folder


def _row(path: Path, patient_id: str, split: str, dataset: str = "nih_cxr14") -> dict[str, Any]:
    return {"path": str(path), "dataset": dataset, "patient_id": patient_id, "split": split,
            "origin": "extra", "covid": "0", "ggo_mask": "", "seen_split": ""}


def test_an_rsna_opacity_image_is_a_positive_even_when_nih_says_no_finding(tmp_path: Path) -> None:
    folder = _nih_folder(tmp_path)
    no_finding = _row(folder.resolve() / "images_512" / "00000001_000.png", "nih_1", "validation")
    openist = _row(tmp_path / "openist.png", "openist_1", "train", dataset="openist")
    rows = [no_finding, openist]
    new = nih_opacity_rows(tmp_path, rows, seen=None)

    assert no_finding["rsna_opacity"] is True and openist["rsna_opacity"] is False
    assert sorted(Path(r["path"]).name for r in new) == ["00000001_001.png", "00000002_000.png"]
    assert all(r["rsna_opacity"] and r["origin"] == "nih_opacity" for r in new)
    by_patient = {r["patient_id"]: r for r in new}
    assert by_patient["nih_1"]["split"] == "validation"  # the patient keeps the split it already had
    assert by_patient["nih_2"]["split"] in ("train", "validation", "test")

    for rec in [no_finding, *new]:
        rec["findings"] = []
        assert kind(rec) == "nih_opacity"
    assert kind(openist) == "normal_adult"
    assert kind({**no_finding, "rsna_opacity": False}) == "normal_adult"
    assert "nih_opacity" in POSITIVE and "nih_opacity" not in NEGATIVE


def test_nih_opacity_never_sets_the_normals_and_is_reported_apart() -> None:
    recs = [{"path": f"n{i}", "kind": "normal_adult", "dataset": "nih_cxr14"} for i in range(10)]
    recs += [{"path": f"o{i}", "kind": "nih_opacity", "dataset": "nih_cxr14"} for i in range(4)]
    oof = {r["path"]: 0.9 if r["kind"] == "nih_opacity" else i / 100 for i, r in enumerate(recs)}
    normals = normal_scores(recs, [oof[r["path"]] for r in recs])
    assert len(normals["nih_cxr14"]) == 10
    figures = nih_opacity_figures(recs, oof, normals, threshold=0.5)
    assert figures["oof_nih_opacity_reported"] == "4/4"
    assert figures["oof_nih_opacity_vs_nih_normal_auc"] == 1.0
    assert np.isclose(figures["oof_nih_opacity_median"], 0.9)
