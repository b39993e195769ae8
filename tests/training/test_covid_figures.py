"""The covid evaluation figures (training/covid_figures.py): each AUC is taken on the images
it names, so a score that reads the collection is told from one that reads the lungs."""

from __future__ import annotations

import numpy as np
import pytest

from training.covid_figures import finding_figures, split_report


def _images() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]]]:
    # ieee8023: 3 COVID-19, 2 "No Finding", 2 SARS; NIH: 2 "No Finding" (empty list), 2 Pneumonia; 2 OpenIST.
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    ds = np.array(["ieee8023"] * 7 + ["nih_cxr14"] * 4 + ["openist"] * 2)
    findings = [["COVID-19"]] * 3 + [["No Finding"]] * 2 + [["SARS"]] * 2
    findings += [[], [], ["Pneumonia"], ["Pneumonia"], [], []]
    return y, ds, np.array([]), findings


def test_a_score_that_reads_the_collection_fails_the_same_collection_figures() -> None:
    y, ds, _, findings = _images()
    # Every ieee8023 picture scores high, every other collection low: perfect against other collections,
    # chance inside ieee8023 and inside NIH.
    s = np.where(ds == "ieee8023", 0.9, 0.1)
    out = split_report(y, s, ds, 0.5, n_boot=20, findings=findings)
    assert out["covid_vs_openist_auc"]["auc"] == 1.0
    assert out["within_ieee8023_auc"]["auc"] == 0.5
    assert out["covid_vs_ieee8023_no_finding_auc"]["auc"] == 0.5
    assert out["covid_vs_ieee8023_no_finding_auc"]["n"] == 5
    assert out["nih_finding_vs_no_finding_auc"]["auc"] == 0.5
    assert out["within_ieee8023_by_finding"] == {
        "No Finding": {"n": 2, "auc": 0.5},
        "SARS": {"n": 2, "auc": 0.5},
    }


def test_a_score_that_reads_the_lungs_passes_them() -> None:
    y, ds, _, findings = _images()
    # COVID-19 highest, then any abnormal lungs, then normal lungs, whatever the collection.
    s = np.array([0.9, 0.95, 0.85, 0.1, 0.2, 0.5, 0.6, 0.1, 0.15, 0.5, 0.55, 0.05, 0.1])
    out = finding_figures(y, s, ds, findings, n_boot=20)
    assert out["covid_vs_ieee8023_no_finding_auc"]["auc"] == 1.0
    assert out["nih_finding_vs_no_finding_auc"]["auc"] == 1.0
    assert out["within_ieee8023_by_finding"]["SARS"]["auc"] == 1.0


def test_without_findings_the_report_has_none_of_those_figures_and_a_mismatch_is_refused() -> None:
    y, ds, _, findings = _images()
    s = np.linspace(0, 1, y.size)
    out = split_report(y, s, ds, 0.5, n_boot=20)
    assert "covid_vs_ieee8023_no_finding_auc" not in out and "within_ieee8023_by_finding" not in out
    with pytest.raises(ValueError, match="findings for"):
        finding_figures(y, s, ds, findings[:-1], n_boot=20)
