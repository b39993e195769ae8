"""The preprocessed-array cache: hits after the first read, keys follow content and settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.cache import ArrayCache, classification_input, load_mask, segmentation_pair
from training.datasets import scan_dataset

SPEC = {"size": 32, "mode": "whole_image"}


@pytest.fixture(scope="module")
def openist_rows(shared_data: Path) -> list:
    return scan_dataset("shared_openist", shared_data / "openist_normal_lungmask")[:3]


def test_second_read_is_a_memory_mapped_hit(
    openist_rows: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.image import load_image
    from pipelines.preprocess import InputSpec, prepare_input

    cache = ArrayCache(tmp_path)
    row = openist_rows[0]
    first = classification_input(cache, row, SPEC)
    expected = prepare_input(load_image(row.image_path).pixels, InputSpec.from_dict(SPEC)).array
    assert np.array_equal(first, expected)  # exactly the pipeline's preprocessing
    import pipelines.image

    def no_decoding(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a cached image was decoded again")

    monkeypatch.setattr(pipelines.image, "load_image", no_decoding)
    second = classification_input(cache, row, SPEC)
    assert isinstance(second, np.memmap) and np.array_equal(first, second)
    assert (cache.hits, cache.misses) == (1, 1)


def test_key_changes_with_settings_variant_and_content(openist_rows: list, tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path)
    row = openist_rows[1]
    a = classification_input(cache, row, SPEC)
    b = classification_input(cache, row, {**SPEC, "size": 48})
    c = classification_input(cache, row, {**SPEC, "mode": "lungs_only"})
    d = classification_input(cache, row, SPEC, variant="lungs_removed")
    assert a.shape == (1, 32, 32) and b.shape == (1, 48, 48) and c.shape == (1, 32, 32)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert cache.misses == 4 and cache.hits == 0
    other = type(row)(**{**vars(row), "content_sha256": "0" * 64})
    classification_input(cache, other, SPEC)
    assert cache.misses == 5


def test_segmentation_pair_and_masks(openist_rows: list, tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path)
    row = openist_rows[2]
    image, mask = segmentation_pair(cache, row, SPEC, "lungs")
    assert image.shape == (1, 32, 32) and mask.shape == (1, 32, 32) and mask.dtype == np.uint8
    full = load_mask(row.lung_mask)
    assert 0.1 < mask.mean() < 0.6 and full.any()
    with pytest.raises(ValueError, match="no ggo mask"):
        segmentation_pair(cache, row, SPEC, "ggo")
    with pytest.raises(ValueError, match="its image is"):
        load_mask(row.lung_mask, (10, 10))
