"""training.crossval (and its recipe): patient-level folds, nested fold runs, pooled out-of-fold figures."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from training.crossval import assign_folds, fold_rows
from training.errors import ConfigError
from training.manifest import ManifestRow, write_manifest
from training.splits import check_leakage, covid_stratum


def _rows() -> list[ManifestRow]:
    rows = []
    for p in range(40):
        for k in range(1 + p % 3):  # 1-3 pictures per patient
            rows.append(ManifestRow(
                image_path=f"/d/{p}_{k}.png", dataset="a" if p % 2 else "b", patient_id=f"p{p}",
                covid="1" if p % 4 == 0 else "0", content_sha256=f"h{p}_{k}",
            ))
    return rows


def test_folds_are_patient_level_seeded_and_spread_every_stratum() -> None:
    rows = _rows()
    folds = assign_folds(rows, 5, seed=1, stratum=covid_stratum)
    assert folds == assign_folds(_rows(), 5, seed=1, stratum=covid_stratum)
    assert folds != assign_folds(_rows(), 5, seed=2, stratum=covid_stratum)
    per_patient: dict[str, set[int]] = {}
    for r, f in zip(rows, folds, strict=True):
        per_patient.setdefault(r.patient_id, set()).add(f)
    assert all(len(s) == 1 for s in per_patient.values())
    for stratum in {(r.dataset, r.covid) for r in rows}:  # every fold gets its share of each stratum
        sizes = Counter(f for r, f in zip(rows, folds, strict=True) if (r.dataset, r.covid) == stratum)
        assert set(sizes) == set(range(5))
        assert max(sizes.values()) - min(sizes.values()) <= 3  # at most one patient's pictures apart


def test_a_link_beyond_the_patient_keeps_pictures_in_one_fold() -> None:
    rows = _rows()
    rows[0].content_sha256 = rows[-1].content_sha256  # the same file under two patients
    folds = assign_folds(rows, 4, seed=0, stratum=covid_stratum)
    assert folds[0] == folds[-1]
    with pytest.raises(ConfigError, match="3 or more folds"):
        assign_folds(rows, 2, seed=0, stratum=covid_stratum)


def test_fold_manifests_nest_validation_and_keep_never_trained_datasets_out_of_training() -> None:
    rows = _rows()
    folds = assign_folds(rows, 5, seed=1, stratum=covid_stratum)
    seen_out_of_fold: list[str] = []
    for k in range(5):
        part = fold_rows(rows, folds, k, 5, never_trained={"b"})
        check_leakage(part)  # no patient in two of the fold's splits
        by = {r.image_path: r.split for r in part}
        for r, f in zip(rows, folds, strict=True):
            want = "test" if f == k else "validation" if f == (k + 1) % 5 else "train"
            if want == "train" and r.dataset == "b":
                assert r.image_path not in by
            else:
                assert by[r.image_path] == want
        seen_out_of_fold += [r.image_path for r in part if r.split == "test"]
    assert sorted(seen_out_of_fold) == sorted(r.image_path for r in rows)  # each image scored exactly once
    assert all(r.split == "" for r in rows)  # the pool's rows are not modified


@pytest.mark.slow  # trains one tiny model per fold: ~18 s
def test_tiny_cross_validation_scores_every_pool_image_once_and_never_reads_test(
    shared_data: Path, training_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_runs import tiny_config, to_toml

    from training.datasets import scan_dataset
    from training.recipes.crossval import main

    ieee = [r for r in scan_dataset("shared_ieee8023", shared_data / "ieee8023_covid_cxr")
            if r.projection == "frontal" and r.covid in ("0", "1")]
    pos = [r for r in ieee if r.covid == "1"]
    neg = [r for r in ieee if r.covid == "0"]
    openist = scan_dataset("shared_openist", shared_data / "openist_normal_lungmask")
    taken_patients: set[str] = set()
    pool: list[ManifestRow] = []
    for r in pos + neg:  # one picture per patient keeps the tiny folds simple
        if r.patient_id not in taken_patients and sum(x.covid == r.covid for x in pool) < 12:
            taken_patients.add(r.patient_id)
            pool.append(r)
    for i, r in enumerate(pool):
        r.split = "train" if i % 3 else "validation"
    test = [r for r in pos if r.patient_id not in taken_patients][:2]
    for r in test:
        r.split = "test"
    held = openist[:6]
    for r in held:
        r.split = "validation"  # never trained on, as OpenIST in the covid manifest
    manifest = write_manifest(pool + test + held, tmp_path / "manifest.csv")

    out = training_root / "crossval_runs"
    cfg = tiny_config("covid", out, shared_data, data__manifest=str(manifest), data__max_images=0,
                      data__sources=[])
    cfg["run"]["name"] = "tiny-cv"
    config = tmp_path / "cv.toml"
    config.write_text(to_toml(cfg), encoding="utf-8")

    assert main([str(config), "--folds", "3", "--n-boot", "20"]) == 0
    root = out / "crossval" / "tiny-cv"
    scored = [rec for k in range(3) for rec in csv.DictReader((root / f"oof_fold{k}.csv").open())]
    assert sorted(rec["image_path"] for rec in scored) == sorted(r.image_path for r in pool + held)
    assert {r.image_path for r in test}.isdisjoint(rec["image_path"] for rec in scored)
    for k in range(3):
        run_manifest = root / f"tiny-cv-fold{k}" / "manifest.csv"
        trained = [rec for rec in csv.DictReader(run_manifest.open()) if rec["split"] == "train"]
        assert trained and all(rec["dataset"] != "openist" for rec in trained)
        bundle = root / f"tiny-cv-fold{k}" / "bundles" / f"tiny-cv-fold{k}"
        assert (bundle / "configs" / "metadata.json").is_file()
    report = json.loads((root / "report.json").read_text())
    assert report["images"] == len(pool) + len(held) and report["folds"] == 3
    pooled = report["pooled"]
    assert 0.0 <= pooled["within_ieee8023_auc"]["auc"] <= 1.0
    assert pooled["covid_vs_openist_auc"]["n"] == 12 + len(held)
    # The figures that need the findings come from the manifest: each ieee8023 negative is counted once.
    by_finding = pooled["within_ieee8023_by_finding"]
    assert sum(e["n"] for e in by_finding.values()) == 12
    assert "Pooled ieee8023 COVID-19 vs each kind" in (root / "report.md").read_text()
    assert set(report["fold_mean"]) == {k for k, v in pooled.items() if isinstance(v, dict) and "auc" in v}
    assert "within_ieee8023_auc" in capsys.readouterr().out

    # A second call trains nothing (bundles exist) and reproduces the same scores.
    assert main([str(config), "--folds", "3", "--n-boot", "20"]) == 0
    again = [rec for k in range(3) for rec in csv.DictReader((root / f"oof_fold{k}.csv").open())]
    assert again == scored
    # The mean of the fold models as one bundle: pooled out-of-fold threshold, held-out test figures.
    from pipelines.bundle import load_bundle, read_metadata
    from pipelines.networks import MeanEnsemble

    export = ["--export-ensemble", "tiny-cv-ens", "0.0.3"]
    assert main([str(config), "--folds", "3", "--n-boot", "20", *export]) == 0
    bundle = Path(capsys.readouterr().out.split("bundle: ")[1].split()[0])
    meta = read_metadata(bundle)
    assert meta.operating_threshold == pytest.approx(report["pooled_threshold_youden"])
    assert "pooled out-of-fold" in meta.threshold_method
    assert "pooled out-of-fold" in (bundle / "docs" / "README.md").read_text()
    assert isinstance(load_bundle(bundle, "covid").network, MeanEnsemble)
    raw = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [m["fold"] for m in raw["ensemble"]["members"]] == [0, 1, 2]
    assert raw["crossval"]["pooled"]["within_ieee8023_auc"]["auc"] == pooled["within_ieee8023_auc"]["auc"]
    assert raw["metrics"]["test"]["n"] == len(test)  # the recipe's test split, untouched by every member

    # Another fold count on the same folder is refused rather than mixed with the saved folds.
    assert main([str(config), "--folds", "4"]) == 2
    assert "another pool or fold count" in capsys.readouterr().err


def test_paired_difference_compares_two_recipes_on_the_same_out_of_fold_images(
    shared_data: Path, tmp_path: Path
) -> None:
    import numpy as np
    from tiny_runs import tiny_config

    from training.config import config_from_dict
    from training.crossval import OOF_COLUMNS, cv_dir, paired_difference

    rng = np.random.default_rng(0)
    images = [(f"/i/{d}{i}.png", d, y) for d, n in (("ieee8023", 40), ("openist", 20))
              for i, y in enumerate([1, 0] * (n // 2) if d == "ieee8023" else [0] * n)]
    good = {p: y + rng.normal(0, 0.7) for p, _, y in images}  # separates the classes
    noise = {p: rng.normal() for p, _, _ in images}  # does not

    def recipe(name: str, scores: dict[str, float]) -> object:
        cfg = config_from_dict(tiny_config("covid", tmp_path, shared_data, run__name=name), where=name)
        root = cv_dir(cfg)
        root.mkdir(parents=True)
        for k in range(3):
            with (root / f"oof_fold{k}.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(OOF_COLUMNS)
                for i, (p, d, y) in enumerate(images):
                    if i % 3 == k:
                        w.writerow([p, "pat" + p, d, y, scores[p]])
        return cfg

    a, b, same = recipe("a", good), recipe("b", noise), recipe("c", good)
    diff = paired_difference(a, b, 3, n_boot=200)
    assert diff["images"] == 60
    assert diff["within_ieee8023_auc"]["difference"] > 0.2
    assert diff["within_ieee8023_auc"]["ci95"][0] > 0  # a clear gain is told from zero
    assert diff["within_ieee8023_auc"]["fold_mean_difference"] > 0.2
    zero = paired_difference(a, same, 3, n_boot=50)
    assert zero["selection_score"] == {"difference": 0.0, "ci95": [0.0, 0.0], "fold_mean_difference": 0.0}
    (cv_dir(same) / "oof_fold2.csv").unlink()
    with pytest.raises(ConfigError, match=r"folds \[2\]"):
        paired_difference(a, same, 3, n_boot=10)
