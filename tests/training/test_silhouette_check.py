"""training.recipes.silhouette_check: thumbnails, balanced weights, and out-of-fold scores that can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.metrics import roc_auc
from training.recipes.silhouette_check import asymmetry, fit_weights, main, out_of_fold_scores, thumbnails


def test_thumbnails_are_block_means() -> None:
    x = np.zeros((1, 4, 4))
    x[0, :2, :2] = 1.0
    assert thumbnails(x, 2).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="multiple of grid"):
        thumbnails(np.zeros((1, 5, 5)), 2)


def test_asymmetry_is_zero_for_a_mirror_symmetric_frame_and_not_for_one_lung() -> None:
    both = np.zeros((1, 8, 8))
    both[0, 2:6, 1:3] = both[0, 2:6, 5:7] = 1.0
    one = both.copy()
    one[0, :, 4:] = 0.0
    assert asymmetry(both, 4).shape == (1, 8) and not asymmetry(both, 4).any()
    assert asymmetry(one, 4).sum() > 0


def test_every_group_gets_the_same_weight() -> None:
    from training.manifest import ManifestRow
    from training.tasks import COVID

    rows = [ManifestRow(image_path=f"/{i}.png", dataset=d, source=d, patient_id=f"p{i}", covid=c)
            for i, (d, c) in enumerate([("a", "0"), ("a", "0"), ("a", "0"), ("b", "0")])]
    w = fit_weights(rows, COVID, "source_balanced")
    assert w.sum() == pytest.approx(1.0)
    assert w[:3].sum() == pytest.approx(w[3])
    assert fit_weights(rows, COVID, "shuffle").tolist() == [0.25] * 4  # the recipe's own draw


def test_out_of_fold_scores_find_a_real_signal_and_not_a_missing_one() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    folds = np.arange(n) % 5

    def weigh(fit: np.ndarray) -> np.ndarray:  # each class the same total weight
        w = np.where(y[fit] == 1, 1.0 / (y[fit] == 1).sum(), 1.0 / (y[fit] == 0).sum())
        return w / w.sum()

    trainable = np.ones(n, bool)
    signal = rng.normal(size=(n, 6)) + y[:, None] * 1.5
    noise = rng.normal(size=(n, 6))
    assert roc_auc(y, out_of_fold_scores(signal, y, folds, trainable, weigh, 0.01)) > 0.9
    assert abs(roc_auc(y, out_of_fold_scores(noise, y, folds, trainable, weigh, 0.01)) - 0.5) < 0.15


def test_without_a_cross_validation_it_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\ntask = "covid"\nname = "x"\noutput_dir = "{tmp_path}"\n', encoding="utf-8")
    assert main([str(config)]) == 2
    assert "run training.recipes.crossval" in capsys.readouterr().err


def test_out_of_fold_files_hold_the_mean_with_another_recipe(tmp_path: Path) -> None:
    import csv

    from training.errors import ConfigError
    from training.manifest import ManifestRow
    from training.recipes.silhouette_check import write_oof

    rows = [ManifestRow(image_path=f"/i{i}.png", dataset="ieee8023", patient_id=f"p{i}", covid=str(i % 2))
            for i in range(4)]
    folds = np.array([0, 0, 1, 1])
    (tmp_path / "folds.csv").write_text("image_path,fold\n", encoding="utf-8")
    other = tmp_path / "cnn"
    other.mkdir()
    for k in (0, 1):
        with (other / f"oof_fold{k}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_path", "score"])
            w.writerows([[r.image_path, "1.0"] for r, f in zip(rows, folds, strict=True) if f == k])
    probs = np.array([0.0, 0.2, 0.4, 0.6])

    def written() -> list[float]:
        return [float(rec["score"]) for k in (0, 1)
                for rec in csv.DictReader((tmp_path / "out" / f"oof_fold{k}.csv").open())]

    labels = np.array([0, 1, 0, 1])
    write_oof(tmp_path / "out", tmp_path / "folds.csv", rows, labels, folds, probs, [other])
    assert written() == [0.5, 0.6, 0.7, 0.8]
    first = list(csv.DictReader((tmp_path / "out" / "oof_fold0.csv").open()))
    assert [rec["label"] for rec in first] == ["0", "1"]
    write_oof(tmp_path / "out", tmp_path / "folds.csv", rows, labels, folds, probs, [other], weight=0.0)
    assert written() == [1.0] * 4  # the CNNs' mean alone
    write_oof(tmp_path / "out", tmp_path / "folds.csv", rows, labels, folds, probs)
    assert written() == pytest.approx(probs.tolist())  # the silhouette model alone
    with pytest.raises(ConfigError, match="not in"):
        write_oof(tmp_path / "out", tmp_path / "folds.csv", rows, labels, folds, probs, [other], weight=2.0)
    (other / "oof_fold1.csv").unlink()
    with pytest.raises(ConfigError, match="not found"):
        write_oof(tmp_path / "out", tmp_path / "folds.csv", rows, labels, folds, np.zeros(4), [other])
