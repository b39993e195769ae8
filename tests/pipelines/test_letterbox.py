"""The letterbox and its exact inverse: masks, heatmaps and boxes land on the right source pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.preprocess import (
    YOLO_PAD_VALUE,
    EmptyLungMaskError,
    InputSpec,
    Letterbox,
    prepare_input,
    prepare_yolo_image,
)

SHAPES = [(300, 457), (457, 300), (1000, 1000), (97, 61)]


def _model_centres_in_source(geo: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (pixel-centre convention) of every model pixel centre, by the documented formula."""
    sy, sx = geo.scale_yx
    u = np.arange(geo.size)
    x = (u + 0.5 - geo.pad[1]) / sx + geo.crop[1] - 0.5
    y = (u + 0.5 - geo.pad[0]) / sy + geo.crop[0] - 0.5
    return y, x


def _interior(geo: Letterbox, margin: int) -> np.ndarray:
    """Source pixels at least ``margin`` source pixels (and one model pixel) inside the crop."""
    h, w = geo.source_shape
    y0, x0, y1, x1 = geo.crop
    sy, sx = geo.scale_yx
    my, mx = margin + int(np.ceil(1 / sy)), margin + int(np.ceil(1 / sx))
    inside = np.zeros((h, w), dtype=bool)
    inside[y0 + my:y1 - my, x0 + mx:x1 - mx] = True
    return inside


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("crop", [None, "offset", "stretch"])
def test_linear_field_survives_to_source_exactly(shape: tuple[int, int], crop: str | None) -> None:
    """A field linear in source coordinates, sampled at the model pixel centres, maps back to itself.

    Bilinear interpolation reproduces linear functions exactly, so any half-pixel or padding error in
    the inverse shows up as a residual.
    """
    h, w = shape
    box = None if crop in (None, "stretch") else (h // 5, w // 7, h - h // 9, w - w // 4)
    geo = Letterbox.fit(shape, 64, box, rule="stretch" if crop == "stretch" else "letterbox")
    y, x = _model_centres_in_source(geo)
    field = 0.013 * x[None, :] - 0.007 * y[:, None] + 2.0
    back = geo.to_source(field.astype(np.float32))
    yy, xx = np.mgrid[0:h, 0:w]
    expected = 0.013 * xx - 0.007 * yy + 2.0
    inside = _interior(geo, 1)
    np.testing.assert_allclose(back[inside], expected[inside], atol=1e-4)
    if box is not None:  # outside the crop there is nothing to map: zero
        outside = np.ones((h, w), dtype=bool)
        outside[box[0]:box[2], box[1]:box[3]] = False
        assert not back[outside].any()


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_resize_samples_the_same_coordinates(shape: tuple[int, int]) -> None:
    """image_to_model of a linear source field equals that field at the documented model-pixel centres."""
    h, w = shape
    geo = Letterbox.fit(shape, 64)
    yy, xx = np.mgrid[0:h, 0:w]
    source = (0.02 * xx + 0.01 * yy).astype(np.float32)
    model = geo.image_to_model(source, pad_value=-1.0)
    y, x = _model_centres_in_source(geo)
    expected = 0.02 * x[None, :] + 0.01 * y[:, None]
    rows, cols = geo.content
    # the antialias kernel is symmetric: on a linear field it returns the centre value (edges excluded)
    inner = (slice(rows.start + 2, rows.stop - 2), slice(cols.start + 2, cols.stop - 2))
    np.testing.assert_allclose(model[inner], expected[inner], atol=2e-3 * max(h, w) / 64)
    assert np.all(model[~geo.content_mask()] == -1.0)
    top, left = geo.pad
    assert (top, left) == ((64 - geo.scaled[0]) // 2, (64 - geo.scaled[1]) // 2)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_mask_round_trip_of_a_known_shape(shape: tuple[int, int]) -> None:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = 0.4 * h, 0.6 * w, 0.25 * min(h, w)
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    geo = Letterbox.fit(shape, 128)
    back = geo.mask_to_source(geo.mask_to_model(disk).astype(np.float32))
    # every disagreement lies within one model pixel (in source pixels) of the true boundary
    tolerance = 1.0 / min(geo.scale_yx) + 1.0
    boundary_distance = np.minimum(ndimage.distance_transform_edt(disk),
                                   ndimage.distance_transform_edt(~disk))
    assert np.all(boundary_distance[back != disk] <= tolerance)
    iou = (back & disk).sum() / (back | disk).sum()
    assert iou > 0.93
    centroid = np.argwhere(back).mean(axis=0)
    assert np.allclose(centroid, (cy, cx), atol=0.5 / min(geo.scale_yx) + 0.5)


@pytest.mark.parametrize("shape", SHAPES)
def test_heatmap_peak_lands_on_its_source_pixel(shape: tuple[int, int]) -> None:
    h, w = shape
    py, px = int(0.55 * h), int(0.45 * w)
    geo = Letterbox.fit(shape, 64)
    y, x = _model_centres_in_source(geo)
    sigma = 3.0 / min(geo.scale_yx)
    model = np.exp(-((x[None, :] - px) ** 2 + (y[:, None] - py) ** 2) / (2 * sigma**2))
    back = geo.to_source(model.astype(np.float32))
    # the maximum sits at the model sample nearest the peak: within half a model pixel
    peak = np.unravel_index(np.argmax(back), back.shape)
    half = 0.5 / min(geo.scale_yx) + 0.5
    assert abs(peak[0] - py) <= half and abs(peak[1] - px) <= half
    # and the heatmap's centre of mass is the source pixel itself
    yy, xx = np.mgrid[0:h, 0:w]
    centre = (float((back * yy).sum() / back.sum()), float((back * xx).sum() / back.sum()))
    assert centre == pytest.approx((py, px), abs=0.25)


@pytest.mark.parametrize("shape", SHAPES)
def test_boxes_round_trip_and_match_the_shape(shape: tuple[int, int]) -> None:
    h, w = shape
    box = np.array([[0.2 * w, 0.3 * h, 0.55 * w, 0.8 * h]]).round()
    geo = Letterbox.fit(shape, 96)
    model_box = geo.boxes_to_model(box)
    np.testing.assert_allclose(geo.boxes_to_source(model_box), box, atol=1e-9)
    rect = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = box[0].astype(int)
    rect[y0:y1, x0:x1] = True
    found = np.argwhere(geo.mask_to_model(rect))
    (my0, mx0), (my1, mx1) = found.min(axis=0), found.max(axis=0) + 1
    np.testing.assert_allclose(model_box[0], [mx0, my0, mx1, my1], atol=1.0)
    # a box from the model grid is clipped to the image
    clipped = geo.boxes_to_source(np.array([[-50.0, -50.0, 500.0, 500.0]]))[0]
    assert clipped.tolist() == [0.0, 0.0, float(w), float(h)]


def test_whole_image_input_is_zscored_over_content_padding_constant() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.2, 0.9, size=(200, 120)).astype(np.float32)
    spec = InputSpec(size=64, outside_value=-3.0)
    prep = prepare_input(pixels, spec)
    assert prep.array.shape == (1, 64, 64)
    content = prep.array[0][prep.geometry.content_mask()]
    assert abs(content.mean()) < 1e-3 and abs(content.std() - 1) < 1e-2
    assert np.all(prep.array[0][~prep.geometry.content_mask()] == -3.0)
    assert prepare_input(pixels, InputSpec(size=64, channels=3)).array.shape == (3, 64, 64)


def test_lungs_only_input_ignores_everything_outside_the_lungs() -> None:
    """The anti-shortcut property: change every non-lung pixel, the network input does not move."""
    rng = np.random.default_rng(1)
    h, w = 300, 260
    lungs = np.zeros((h, w), dtype=bool)
    lungs[80:220, 40:110] = True
    lungs[90:230, 150:220] = True
    pixels = rng.uniform(0, 1, size=(h, w)).astype(np.float32)
    spec = InputSpec(size=64, mode="lungs_only", lung_margin=0.1, outside_value=0.0)
    first = prepare_input(pixels, spec, lungs)
    other = pixels.copy()
    other[~lungs] = rng.uniform(0, 1, size=int((~lungs).sum()))  # a different hospital's background
    other[:40] = 1.0  # burnt-in labels
    second = prepare_input(other, spec, lungs)
    np.testing.assert_array_equal(first.array, second.array)
    # crop = lung box + 10 % margin; lung pixels standardised; the rest constant
    assert first.geometry.crop == (80 - 15, 40 - 18, 230 + 15, 220 + 18)  # 150 x 180 lungs
    lung_values = first.array[0][first.reference]
    assert abs(lung_values.mean()) < 1e-3 and abs(lung_values.std() - 1) < 1e-2
    assert np.all(first.array[0][~first.reference] == 0.0)
    with pytest.raises(EmptyLungMaskError):
        prepare_input(pixels, spec, np.zeros_like(lungs))
    with pytest.raises(EmptyLungMaskError):
        prepare_input(pixels, spec, None)


def test_yolo_image_is_uint8_rgb_with_ultralytics_padding() -> None:
    pixels = np.linspace(0, 1, 50 * 80, dtype=np.float32).reshape(50, 80)
    image, geo = prepare_yolo_image(pixels, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.all(image[~geo.content_mask()] == round(YOLO_PAD_VALUE * 255))
    assert np.array_equal(image[..., 0], image[..., 2])


def test_input_spec_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="input mode"):
        InputSpec(mode="lungs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown input keys"):
        InputSpec.from_dict({"size": 64, "colour": "rgb"})
