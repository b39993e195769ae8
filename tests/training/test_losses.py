"""The training losses and the segmentation threshold the export chooses on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import config_from_dict
from training.errors import ConfigError
from training.export import segmentation_threshold
from training.losses import BinaryLoss, SegLoss


def test_binary_loss_takes_the_networks_one_logit_per_image() -> None:
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    labels = torch.tensor([1.0, 0.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), labels)
    assert float(BinaryLoss()(logits, labels)) == pytest.approx(float(expected))
    weighted = BinaryLoss(pos_weight=torch.tensor([3.0]))(logits, labels)
    assert float(weighted) > float(expected)  # a missed positive costs more


def test_seg_loss_is_small_for_a_right_mask_and_large_for_a_wrong_one() -> None:
    target = torch.zeros((2, 1, 8, 8))
    target[:, 0, :4] = 1.0
    right = torch.where(target > 0, 8.0, -8.0)
    loss = SegLoss()
    assert float(loss(right, target)) < 0.01
    assert float(loss(-right, target)) > 1.5


def test_segmentation_threshold_maximises_mean_validation_dice() -> None:
    truth = np.zeros((10, 10), bool)
    truth[:5] = True
    probs = np.where(truth, 0.62, 0.45)  # only cuts in (0.45, 0.62] separate the mask
    t, method = segmentation_threshold([probs, probs], [truth, truth])
    assert 0.45 < t <= 0.62 and "Dice 1.0000" in method


@pytest.mark.parametrize("key", ["seg_loss", "source_adversary", "finding_aux", "augment_hflip"])
def test_removed_options_are_unknown_keys(key: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown key"):
        config_from_dict({"run": {"task": "covid", "name": "x"}, "train": {key: 1}})
