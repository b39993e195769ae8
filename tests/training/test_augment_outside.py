"""Augmentation keeps the input's outside value: a rotated lungs-only input has no border of another value."""

from __future__ import annotations

import torch

from training.data import augment_about, augmentation


def test_the_padding_of_a_shifted_augmentation_is_the_outside_value() -> None:
    x = torch.full((1, 64, 64), -3.0)
    x[:, 16:48, 16:48] = 1.0  # "lung" pixels
    out = [augment_about(augmentation(["image"], seed, 64), x, -3.0) for seed in range(8)]
    moved = [o for o in out if not torch.equal(o, x)]
    assert moved  # the affine ran (prob 0.7)
    for o in moved:  # the corners are padding after any rotation or shift: the outside value +- the shift
        for corner in (o[0, :2, :2], o[0, :2, -2:], o[0, -2:, :2], o[0, -2:, -2:]):
            assert float((corner + 3.0).abs().max()) <= 0.1 + 1e-4
    plain = [torch.as_tensor(augmentation(["image"], seed, 64)({"image": x})["image"]) for seed in range(8)]
    assert any(float(p[0, 0, 0].abs()) <= 0.1 + 1e-4 for p in plain)  # without the shift: a border of ~0
