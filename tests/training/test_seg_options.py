"""Segmentation training options for empty masks (normal lungs): batch Dice, the dice_fp metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import config_from_dict
from training.errors import ConfigError


def _cfg(**train: object) -> dict:
    return {"run": {"task": "ggo_segmentation", "name": "x"}, "train": dict(train)}


def test_defaults_keep_the_per_image_dice_and_mean_dice_metric() -> None:
    cfg = config_from_dict(_cfg())
    assert cfg.train.seg_loss == "dice_bce" and cfg.train.seg_metric == "dice"


@pytest.mark.parametrize("key", ["seg_loss", "seg_metric"])
def test_unknown_option_values_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_dict(_cfg(**{key: "nonsense"}))


def test_dice_fp_penalises_foreground_on_empty_truth() -> None:
    from training.trainers.loop import seg_dice_fp

    truth = np.zeros((10, 10), bool)
    truth[:5] = True
    perfect = truth.astype(float)
    empty = np.zeros((10, 10), bool)
    noisy = np.zeros((10, 10))
    noisy[:2] = 0.9  # 20 % of the frame called foreground on a normal image
    assert seg_dice_fp([perfect, np.zeros((10, 10))], [truth, empty], 0.5, 3.0) == pytest.approx(1.0)
    assert seg_dice_fp([perfect, noisy], [truth, empty], 0.5, 3.0) == pytest.approx(1.0 - 3 * 0.2)
    # a model that calls nothing scores 0, not the 0.5 that the mean-Dice metric gives it here
    assert seg_dice_fp([np.zeros((10, 10))] * 2, [truth, empty], 0.5, 3.0) == 0.0


def test_dice_fp_threshold_moves_above_normal_noise() -> None:
    from training.export import segmentation_threshold

    truth = np.zeros((10, 10), bool)
    truth[:5] = True
    ggo = np.where(truth, 0.9, 0.1)
    normal = np.full((10, 10), 0.6)  # diffuse mid probability on a normal image
    t, method = segmentation_threshold([ggo, normal], [truth, np.zeros_like(truth)], "dice_fp", 3.0)
    assert 0.6 < t <= 0.9 and "empty-truth" in method


def test_batch_dice_loss_is_finite_and_small_on_empty_masks_predicted_empty() -> None:
    from training.trainers.loop import SegLoss

    logits = torch.full((2, 1, 8, 8), -8.0)
    target = torch.zeros((2, 1, 8, 8))
    target[0, 0, :4] = 1.0
    logits[0, 0, :4] = 8.0
    per_image, batch = SegLoss(batch=False)(logits, target), SegLoss(batch=True)(logits, target)
    assert torch.isfinite(batch) and float(batch) < 0.01
    assert float(per_image) > float(batch)  # per image, the empty one costs a Dice loss of ~1


def test_positives_only_dice_ignores_empty_images_in_the_dice_term() -> None:
    from training.trainers.loop import SegLoss

    target = torch.zeros((2, 1, 8, 8))
    target[0, 0, :4] = 1.0
    logits = torch.where(target > 0, 8.0, -8.0)
    logits[1, 0, :2] = 8.0  # false positives on the empty image: BCE sees them, Dice does not
    pos = SegLoss(positives_only=True)
    only_bce = torch.nn.BCEWithLogitsLoss()(logits, target)
    assert float(pos(logits, target)) == pytest.approx(float(only_bce), abs=1e-3)
    empty = torch.zeros((2, 1, 8, 8))
    assert torch.isfinite(pos(torch.zeros((2, 1, 8, 8), requires_grad=True), empty))


def test_init_weights_load_and_a_wrong_sha_is_refused(tmp_path) -> None:  # noqa: ANN001
    from training.manifest import file_sha256
    from training.tasks import GGO_SEGMENTATION
    from training.trainers.loop import build_model, load_init_weights

    model = {"architecture": "unet", "params": {"channels": [4, 8], "strides": [2]}}
    cfg = config_from_dict({"run": {"task": "ggo_segmentation", "name": "x"}, "model": model})
    src, _ = build_model(cfg, GGO_SEGMENTATION, 1)
    path = tmp_path / "model.pt"
    torch.save({k: v.half() if torch.is_floating_point(v) else v for k, v in src.state_dict().items()}, path)
    cfg.model.init_weights, cfg.model.init_sha256 = str(path), file_sha256(path)
    dst, _ = build_model(cfg, GGO_SEGMENTATION, 1)
    load_init_weights(dst, cfg)
    for k, v in src.state_dict().items():
        assert torch.allclose(dst.state_dict()[k].float(), v.half().float()), k
    cfg.model.init_sha256 = "0" * 64
    with pytest.raises(ConfigError, match="sha256"):
        load_init_weights(dst, cfg)
