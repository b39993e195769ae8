"""Each public-dataset adapter on a miniature tree in its published layout, and on broken copies."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from minitrees import EXPECTED

from training.datasets import ADAPTERS, scan_dataset
from training.errors import DatasetLayoutError


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_adapter_reads_published_layout(name: str, tmp_path: Path) -> None:
    make, expected = EXPECTED[name]
    root = make(tmp_path / name)
    rows = scan_dataset(name, root)
    assert len(rows) == expected
    for row in rows:
        assert Path(row.image_path).is_file()
        assert row.patient_id and row.dataset and row.license
        assert len(row.content_sha256) == 64
        assert row.projection in ("frontal", "lateral", "")


def test_every_public_dataset_has_an_adapter_and_a_tree() -> None:
    public = {n for n in ADAPTERS if not n.startswith("shared_")}
    assert public == set(EXPECTED)
    assert len(public) == 11


def _by_name(rows):  # noqa: ANN001, ANN202
    return {Path(r.image_path).name: r for r in rows}


def test_labels_and_views_are_mapped(tmp_path: Path) -> None:
    bimcv = scan_dataset("bimcv_covid_pos", EXPECTED["bimcv_covid_pos"][0](tmp_path / "b"))
    assert {r.covid for r in bimcv} == {"1"}
    lat = [r for r in bimcv if "vp-ll" in r.image_path][0]
    assert lat.projection == "lateral" and lat.patient_id == "bimcv_sub-S0001"
    assert "COVID 19" in [r for r in bimcv if "vp-pa" in r.image_path][0].findings
    assert {
        r.covid for r in scan_dataset("bimcv_covid_neg", EXPECTED["bimcv_covid_neg"][0](tmp_path / "n"))
    } == {"0"}

    ieee = _by_name(scan_dataset("ieee8023", EXPECTED["ieee8023"][0](tmp_path / "i")))
    assert ieee["a.jpg"].covid == "1" and ieee["b.png"].covid == "0" and ieee["c.png"].covid == ""
    assert ieee["b.png"].projection == "lateral" and ieee["c.png"].projection == "frontal"
    assert ieee["a.jpg"].image_key == "ieee8023:a.jpg" and ieee["a.jpg"].patient_id == "ieee8023_2"

    chex = scan_dataset("chexpert", EXPECTED["chexpert"][0](tmp_path / "c"))
    front = [r for r in chex if r.image_path.endswith("view1_frontal.jpg") and "train" in r.image_path][0]
    assert front.findings == ["Pneumonia"]  # -1 (uncertain) Edema is not a finding
    assert front.patient_id == "chexpert_patient00001" and front.view == "AP"
    assert {r.projection for r in chex} == {"frontal", "lateral"}

    rsna = scan_dataset("rsna_pneumonia", EXPECTED["rsna_pneumonia"][0](tmp_path / "r"))
    boxes = [b for r in rsna for b in r.boxes]
    assert len(boxes) == 2 and boxes[0].x1 == 264.0 + 213.0 and all(r.view == "PA" for r in rsna)

    brixia = scan_dataset("brixia", EXPECTED["brixia"][0](tmp_path / "x"))
    assert "brixia_zones=012321" in brixia[0].findings and brixia[0].patient_id == brixia[1].patient_id

    tcia = scan_dataset("tcia_covid", EXPECTED["tcia_covid"][0](tmp_path / "t"))
    assert {r.source for r in tcia} == {"COVID-19-AR"} and len({r.study_id for r in tcia}) == 2

    hm = _by_name(scan_dataset("hm_hospitales", EXPECTED["hm_hospitales"][0](tmp_path / "h")))
    assert hm["img1.dcm"].patient_id in ("hm_1001", "hm_1002")
    assert sorted(r.covid for r in scan_dataset("hm_hospitales", tmp_path / "h")) == ["", "1"]

    pad = scan_dataset("padchest", EXPECTED["padchest"][0](tmp_path / "p"))
    assert [r.projection for r in pad] == ["frontal", "lateral"] and pad[0].findings == [
        "pneumonia",
        "infiltrates",
    ]

    kermany = scan_dataset("kermany_pneumonia", EXPECTED["kermany_pneumonia"][0](tmp_path / "k"))
    patients = {Path(r.image_path).name: r.patient_id for r in kermany}
    assert patients["IM-0115-0001.jpeg"] == patients["NORMAL2-IM-0115-0002.jpeg"] == "kermany_normal_IM-0115"
    assert patients["person1_bacteria_1.jpeg"] == patients["person1_virus_6.jpeg"] == "kermany_person1"


def _rewrite_header(path: Path, old: str, new: str, delimiter: str = ",") -> None:
    text = path.read_text().splitlines()
    text[0] = delimiter.join(new if c == old else c for c in text[0].split(delimiter))
    path.write_text("\n".join(text) + "\n")


BREAKAGES = {
    # adapter -> (how to break the tree, words the error must contain)
    "bimcv_covid_pos": (
        lambda r: _rewrite_header(r / "participants.tsv", "participant", "subject", "\t"),
        ["participants.tsv", "participant"],
    ),
    "bimcv_covid_neg": (lambda r: next(r.glob("sub-*/ses-*/mod-rx/*.json")).unlink(), ["JSON sidecar"]),
    "brixia": (
        lambda r: _rewrite_header(r / "metadata_global_v2.csv", "BrixiaScore", "Score", ";"),
        ["metadata_global_v2.csv", "BrixiaScore"],
    ),
    "hannover": (lambda r: _rewrite_header(r / "data.csv", "image_id", "imageid"), ["data.csv", "image_id"]),
    "tcia_covid": (
        lambda r: _rewrite_header(r / "metadata.csv", "Subject ID", "Subject"),
        ["metadata.csv", "Subject ID"],
    ),
    "hm_hospitales": (
        lambda r: _rewrite_header(r / "COVID_DSL_01.CSV", "PATIENT ID", "PATIENT_ID", ";"),
        ["COVID_DSL_01.CSV", "PATIENT ID"],
    ),
    "ieee8023": (
        lambda r: _rewrite_header(r / "metadata.csv", "filename", "file"),
        ["metadata.csv", "filename"],
    ),
    "padchest": (lambda r: (r / "0" / "i1.png").unlink(), ["missing on disk", "i1.png"]),
    "chexpert": (
        lambda r: _rewrite_header(r / "train.csv", "Frontal/Lateral", "View"),
        ["train.csv", "Frontal/Lateral"],
    ),
    "rsna_pneumonia": (
        lambda r: _rewrite_header(r / "stage_2_train_labels.csv", "Target", "label"),
        ["stage_2_train_labels.csv", "Target"],
    ),
    "kermany_pneumonia": (
        lambda r: (r / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg").rename(
            r / "chest_xray" / "train" / "NORMAL" / "scan_01.jpeg"
        ),
        ["scan_01.jpeg", "NORMAL"],
    ),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_adapter_fails_loudly_on_layout_mismatch(name: str, tmp_path: Path) -> None:
    root = EXPECTED[name][0](tmp_path / name)
    breaker, words = BREAKAGES[name]
    breaker(root)
    with pytest.raises(DatasetLayoutError) as info:
        scan_dataset(name, root)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_empty_cell_names_file_line_and_column(tmp_path: Path) -> None:
    root = EXPECTED["hannover"][0](tmp_path / "h")
    rows = list(csv.reader((root / "data.csv").open()))
    rows[2][1] = ""
    with (root / "data.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(DatasetLayoutError, match=r"data\.csv:3: column 'image_id' is empty"):
        scan_dataset("hannover", root)


def test_unknown_adapter_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="unknown dataset adapter 'nope'"):
        scan_dataset("nope", tmp_path)
    with pytest.raises(DatasetLayoutError, match="dataset folder not found"):
        scan_dataset("chexpert", tmp_path / "absent")
