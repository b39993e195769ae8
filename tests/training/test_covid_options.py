"""Issue-6 COVID options: lung histogram equalisation, acquisition augmentation, epoch selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def test_acquisition_augmentation_keeps_shape() -> None:
    from training.data import _acquisition_augmentation

    chain = _acquisition_augmentation(0)
    for _ in range(40):  # every transform fires (p = 0.3 each) in 40 draws
        out = chain(torch.randn(1, 32, 32))
        assert tuple(torch.as_tensor(out).shape) == (1, 32, 32)


def test_selection_is_the_mean_of_within_and_heldout_aucs() -> None:
    from training.trainers.covid import selection_aucs

    scores = [0.9, 0.8, 0.2, 0.85, 0.1, 0.3, 0.95]
    labels = [1, 1, 0, 0, 0, 0, 0]
    datasets = ["ieee8023", "ieee8023", "ieee8023", "ieee8023", "openist", "openist", "nih_cxr14"]
    aucs = selection_aucs(scores, labels, datasets)
    assert aucs["within"] == pytest.approx(0.75)  # positives 0.9, 0.8 vs negatives 0.2, 0.85
    assert aucs["vs_heldout_normals"] == pytest.approx(1.0)
    assert aucs["mean"] == pytest.approx(0.875)
    none = selection_aucs(scores[:4], labels[:4], datasets[:4])
    assert none["mean"] is None and none["within"] == pytest.approx(0.75)


def test_hflip_augmentation_mirrors_about_half_the_draws_and_is_off_by_default() -> None:
    from training.config import TrainConfig
    from training.data import _augmentation

    assert TrainConfig().augment_hflip is False
    image = torch.zeros((1, 32, 32))
    image[0, :, :8] = 1.0  # bright left quarter: a mirrored draw has it on the right
    flipped = 0
    for seed in range(40):
        out = torch.as_tensor(_augmentation(["image"], seed, 32, hflip=True)({"image": image})["image"])
        flipped += int(out[0, :, 16:].sum() > out[0, :, :16].sum())
        plain = torch.as_tensor(_augmentation(["image"], seed, 32)({"image": image})["image"])
        assert plain[0, :, :16].sum() > plain[0, :, 16:].sum()  # never mirrored without hflip
    assert 8 <= flipped <= 32, flipped


def test_balance_within_license_makes_the_licence_say_nothing_of_the_label() -> None:
    from collections import defaultdict

    from training.config import config_from_dict
    from training.data import sample_weights
    from training.errors import ConfigError
    from training.manifest import ManifestRow
    from training.tasks import COVID

    def row(i: int, dataset: str, licence: str, covid: str) -> ManifestRow:
        return ManifestRow(image_path=f"{dataset}/{i}.png", dataset=dataset, patient_id=f"p{i}",
                           projection="frontal", covid=covid, license=licence)

    # ieee8023: sub-collection "a" is 9 COVID-19 + 1 other, "b" 2 + 8, "c" COVID-19 only; NIH all negative.
    spec = [("a", "1")] * 9 + [("a", "0")] + [("b", "1")] * 2 + [("b", "0")] * 8 + [("c", "1")] * 3
    rows = [row(i, "ieee8023", lic, y) for i, (lic, y) in enumerate(spec)]
    rows += [row(100 + i, "nih_cxr14", "nih", "0") for i in range(20)]
    plain = sample_weights(rows, COVID, "source_balanced")
    balanced = sample_weights(rows, COVID, "source_balanced", "license")
    assert plain is not None and balanced is not None

    def mass(weights: list[float]) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = defaultdict(float)
        for r, w in zip(rows, weights, strict=True):
            out[(r.license, r.covid)] += w / sum(weights)
        return out

    before, after = mass(plain), mass(balanced)
    assert before[("a", "1")] > 5 * before[("a", "0")]  # under the plain draw "a" means COVID-19
    # Groups with both labels: the same COVID-19 : non-COVID odds, so the group says nothing of the label.
    assert after[("a", "1")] / after[("a", "0")] == pytest.approx(after[("b", "1")] / after[("b", "0")])
    for cell in (("nih", "0"),):  # every dataset x class keeps its share of the draw
        assert after[cell] == pytest.approx(before[cell])
    ieee_covid = sum(v for (lic, y), v in after.items() if lic != "nih" and y == "1")
    assert ieee_covid == pytest.approx(sum(v for (lic, y), v in before.items() if lic != "nih" and y == "1"))
    assert sample_weights(rows, COVID, "shuffle", "") is None
    with pytest.raises(ValueError, match="unknown"):
        sample_weights(rows, COVID, "source_balanced", "hospital")
    with pytest.raises(ConfigError, match="balance_within"):
        config_from_dict({"run": {"task": "covid", "name": "x"}, "train": {"balance_within": "hospital"}})
