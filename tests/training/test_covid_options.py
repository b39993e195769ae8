"""COVID input and epoch choice: lung histogram equalisation, z-score default, the selection AUCs,
source-balanced sampling."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.preprocess import InputSpec, prepare_input


def _image_and_lungs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:260]
    smooth = 0.5 + 0.3 * np.sin(yy / 17.0) * np.cos(xx / 23.0)
    image = (smooth + 0.01 * rng.random((300, 260))).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[50:250, 30:120] = True
    mask[50:250, 140:230] = True
    return image, mask


def test_equalize_is_unit_variance_in_the_lungs_and_ignores_the_tone_curve() -> None:
    image, mask = _image_and_lungs()
    spec = InputSpec(size=64, mode="lungs_only", normalization="equalize")
    a = prepare_input(image, spec, mask)
    lungs = a.array[0][a.reference]
    assert abs(float(lungs.mean())) < 1e-3 and abs(float(lungs.std()) - 1.0) < 0.05
    assert np.all(a.array[0][~a.reference] == spec.outside_value)
    # a monotonic grey-scale change (gamma) leaves the equalised lungs unchanged, except where the
    # resize kernel mixes pixels
    b = prepare_input(np.clip(image, 0, 1) ** 2.2, spec, mask)
    assert np.median(np.abs(a.array - b.array)[0][a.reference]) < 0.05


def test_zscore_stays_the_default() -> None:
    assert InputSpec().normalization == "zscore"
    with pytest.raises(ValueError):
        InputSpec(normalization="histogram")


def test_selection_is_the_mean_of_within_and_heldout_aucs() -> None:
    from training.covid_figures import selection_aucs

    scores = [0.9, 0.8, 0.2, 0.85, 0.1, 0.3, 0.95]
    labels = [1, 1, 0, 0, 0, 0, 0]
    datasets = ["ieee8023", "ieee8023", "ieee8023", "ieee8023", "openist", "openist", "nih_cxr14"]
    aucs = selection_aucs(scores, labels, datasets)
    assert aucs["within"] == pytest.approx(0.75)  # positives 0.9, 0.8 vs negatives 0.2, 0.85
    assert aucs["vs_heldout_normals"] == pytest.approx(1.0)
    assert aucs["mean"] == pytest.approx(0.875)
    none = selection_aucs(scores[:4], labels[:4], datasets[:4])
    assert none["mean"] is None and none["within"] == pytest.approx(0.75)


def test_source_balanced_sampling_draws_every_source_and_class_equally() -> None:
    from collections import defaultdict

    from training.data import sample_weights
    from training.manifest import ManifestRow
    from training.tasks import COVID

    def row(i: int, dataset: str, covid: str) -> ManifestRow:
        return ManifestRow(image_path=f"{dataset}/{i}.png", dataset=dataset, patient_id=f"p{i}",
                           projection="frontal", covid=covid)

    rows = [row(i, "ieee8023", "1") for i in range(30)] + [row(100 + i, "ieee8023", "0") for i in range(5)]
    rows += [row(200 + i, "nih_cxr14", "0") for i in range(65)]
    weights = sample_weights(rows, COVID, "source_balanced")
    assert weights is not None
    mass: dict[tuple[str, str], float] = defaultdict(float)
    for r, w in zip(rows, weights, strict=True):
        mass[(r.source, r.covid)] += w
    assert len(mass) == 3 and all(v == pytest.approx(1.0) for v in mass.values())
    assert sample_weights(rows, COVID, "shuffle") is None
