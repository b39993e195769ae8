"""Weak GGO labels: a picture labelled only in part (``ggo_labelled``: the clear Brixia zones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.manifest import ManifestRow, read_manifest, write_manifest


def _row(tmp_path: Path, labelled: bool, name: str = "img", seed: int = 0) -> ManifestRow:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ggo.png")
    part = np.zeros((64, 64), np.uint8)
    part[:, :32] = 255  # only the left half is a label
    Image.fromarray(part).save(tmp_path / "labelled.png")
    return ManifestRow(
        image_path=str(tmp_path / f"{name}.png"), dataset="ieee8023", patient_id=name, split="train",
        ggo_mask=str(tmp_path / "ggo.png"), ggo_labelled=str(tmp_path / "labelled.png") if labelled else "",
    )


def test_the_column_round_trips_and_old_manifests_read_without_it(tmp_path: Path) -> None:
    row = _row(tmp_path, labelled=True)
    write_manifest([row], tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv")[0].ggo_labelled == row.ggo_labelled
    text = (tmp_path / "m.csv").read_text().splitlines()
    header = text[0].split(",")
    col = header.index("ggo_labelled")
    old = [",".join(v for i, v in enumerate(line.split(",")) if i != col) for line in text]
    (tmp_path / "old.csv").write_text("\n".join(old) + "\n")
    assert read_manifest(tmp_path / "old.csv")[0].ggo_labelled == ""


def test_unlabelled_pixels_reach_the_target_as_unlabelled_also_after_augmentation(tmp_path: Path) -> None:
    from training.cache import UNLABELLED_PIXEL, ArrayCache, segmentation_pair
    from training.data import UNLABELLED, SegmentationData
    from training.tasks import GGO_SEGMENTATION

    spec = {"size": 32, "mode": "whole_image", "normalization": "zscore", "channels": 1}
    cache = ArrayCache(tmp_path / "cache")
    weak, full = _row(tmp_path, labelled=True), _row(tmp_path, labelled=False)
    _, mask = segmentation_pair(cache, weak, spec, "ggo")
    assert set(np.unique(mask)) == {0, UNLABELLED_PIXEL}
    assert (mask[0, :, 16:] == UNLABELLED_PIXEL).all() and (mask[0, :, :16] == 0).all()
    _, plain = segmentation_pair(cache, full, spec, "ggo")
    assert not plain.any()  # the same picture without the column: a full (empty) label, its own cache entry
    for augment in (False, True):
        data = SegmentationData([weak], GGO_SEGMENTATION, cache, spec, augment=augment, seed=3)
        _, y = data[0]
        values = set(torch.unique(y).tolist())
        assert values <= {0.0, UNLABELLED} and UNLABELLED in values and 0.0 in values
        # the label region keeps its place and size up to the augmentation's small shift, scale and rotation
        share = float((y == UNLABELLED).float().mean())
        assert 0.3 < share < 0.7


def test_the_loss_ignores_unlabelled_pixels_and_is_unchanged_when_all_are_labelled() -> None:
    from training.data import UNLABELLED
    from training.trainers.loop import SegLoss

    torch.manual_seed(0)
    loss = SegLoss()
    target = torch.zeros((2, 1, 8, 8))
    target[0, 0, :4] = 1.0
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    with torch.no_grad():
        plain = loss(logits, target)
        assert float(plain) == pytest.approx(
            float(loss.dice(logits, target) + torch.nn.BCEWithLogitsLoss()(logits, target)), rel=1e-6
        )
    weak = target.clone()
    weak[1, 0, :, 4:] = UNLABELLED  # image 1 labels only its left half (all background there)
    value = loss(logits, weak)
    value.backward()
    assert logits.grad is not None
    assert float(logits.grad[1, 0, :, 4:].abs().sum()) == 0.0  # no push on pixels without a label
    assert float(logits.grad[1, 0, :, :4].abs().sum()) > 0.0
    # anything predicted where there is no label changes nothing
    other = logits.detach().clone()
    other[1, 0, :, 4:] = 50.0
    assert float(loss(other, weak)) == pytest.approx(float(value.detach()), rel=1e-6)
    # foreground predicted on the labelled clear half costs more than background there
    worse = logits.detach().clone()
    worse[1, 0, :, :4] = 8.0
    assert float(loss(worse, weak)) > float(value.detach())


def test_weak_rows_are_refused_outside_train_and_by_the_detection_task(tmp_path: Path) -> None:
    from training.config import config_from_dict
    from training.distributed import DistContext
    from training.errors import TrainingError
    from training.tasks import GGO_DETECTION, GGO_SEGMENTATION
    from training.trainers.loop import train_torch_task

    weak = _row(tmp_path, labelled=True)
    assert GGO_SEGMENTATION.accepts(weak) and not GGO_DETECTION.accepts(weak)
    assert GGO_DETECTION.accepts(_row(tmp_path, labelled=False))
    val = _row(tmp_path, labelled=True, name="other", seed=1)
    val.split = "validation"
    write_manifest([weak, val], tmp_path / "weak.csv")
    cfg = config_from_dict({
        "run": {"task": "ggo_segmentation", "name": "weak", "output_dir": str(tmp_path / "runs")},
        "data": {"manifest": str(tmp_path / "weak.csv")},
        "model": {"architecture": "unet", "params": {"channels": [4, 8], "strides": [2]}},
        "input": {"size": 32, "mode": "whole_image"},
        "train": {"epochs": 1, "threads": 1},
    })
    with pytest.raises(TrainingError, match="weakly labelled"):
        train_torch_task(cfg, GGO_SEGMENTATION, DistContext())
