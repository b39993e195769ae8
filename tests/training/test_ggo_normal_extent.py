"""training.recipes.ggo_normal_extent: the box gates of candidates G (mask cut to the boxes)
and H (mask kept only on images with a box)."""

from __future__ import annotations

import numpy as np

from pipelines.results import Box
from training.recipes.ggo_normal_extent import boxes_mask, report


def test_boxes_cover_the_pixels_whose_centres_they_hold_clipped_to_the_image() -> None:
    # Pixel (r, c) has its centre at (c + 0.5, r + 0.5); x1/y1 are exclusive.
    mask = boxes_mask((6, 8), [Box(1.0, 2.0, 3.0, 4.0, 0.9), Box(6.4, -3.0, 20.0, 1.0, 0.3)])
    expected = np.zeros((6, 8), dtype=bool)
    expected[2:4, 1:3] = True
    expected[0:1, 6:8] = True
    assert np.array_equal(mask, expected)
    assert not boxes_mask((4, 4), []).any()


def test_the_gate_reports_both_settings_and_only_gated_ggo_inside_boxes() -> None:
    lung = np.zeros((10, 10), dtype=bool)
    lung[1:9, 1:9] = True
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[2:6, 2:6] = 0.9  # 16 px of "GGO", 4 of them inside the box
    boxes = boxes_mask((10, 10), [Box(4.0, 4.0, 8.0, 8.0, 0.5)])
    items = [{"dataset": "openist", "covid": "0", "lung": lung, "prob": prob, "truth": None, "boxes": boxes}]
    plain = report(items, 0.5)["extent_pct"]["all normals"]["median"]
    gated = report(items, 0.5, within_boxes=True)["extent_pct"]["all normals"]["median"]
    assert plain == round(100 * 16 / 64, 2) and gated == round(100 * 4 / 64, 2)


def test_the_image_gate_keeps_the_whole_mask_with_any_box_and_drops_it_without_one() -> None:
    lung = np.zeros((10, 10), dtype=bool)
    lung[1:9, 1:9] = True
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[2:6, 2:6] = 0.9
    truth = prob > 0.5
    one_box = boxes_mask((10, 10), [Box(7.0, 7.0, 8.0, 8.0, 0.5)])  # a box away from the opacity
    no_box = boxes_mask((10, 10), [])
    items = [
        {"dataset": "gb", "covid": "1", "lung": lung, "prob": prob, "truth": truth, "boxes": one_box},
        {"dataset": "openist", "covid": "0", "lung": lung, "prob": prob, "truth": None, "boxes": no_box},
    ]
    res = report(items, 0.5, gate_by_boxes=True)
    assert res["gate_by_boxes"] is True
    assert res["dice"]["gb"]["mean"] == 1.0  # whole mask kept: the detector found something
    assert res["extent_pct"]["all normals"]["median"] == 0.0  # no box: no GGO reported
    assert report(items, 0.5)["extent_pct"]["all normals"]["median"] == round(100 * 16 / 64, 2)


def test_the_brightness_cut_keeps_only_mask_pixels_brighter_than_their_lung() -> None:
    lung = np.zeros((10, 10), dtype=bool)
    lung[1:9, 1:9] = True
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[2:6, 2:6] = 0.9  # 16 px of "GGO"
    brighter = np.zeros((10, 10), dtype=bool)
    brighter[2:4, 1:9] = True  # 8 of them above the lung's mean
    items = [{"dataset": "openist", "covid": "0", "lung": lung, "prob": prob, "truth": None, "boxes": None,
              "brighter": brighter}]
    res = report(items, 0.5, brighter_than_lung=True)
    assert res["brighter_than_lung"] is True
    assert res["extent_pct"]["all normals"]["median"] == round(100 * 8 / 64, 2)
    assert report(items, 0.5)["extent_pct"]["all normals"]["median"] == round(100 * 16 / 64, 2)
