"""The decoder's own limits and its per-value presentation table.

The receive path refuses a code stream larger than Rows x Columns, but a file given to
``analyze`` or stored before that check reaches the decoder directly: the decoder must refuse it
too, before allocating. The presentation table must give what per-pixel arithmetic gives.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from pipelines.errors import ImageDecodeError
from pipelines.image import _presentation, _to_grey, load_dicom


def _image(rows: int, cols: int, pixels: np.ndarray, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    return ds


def _jpeg(rows: int, cols: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((rows, cols), np.uint8)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def test_a_code_stream_larger_than_rows_columns_is_refused_before_decoding(tmp_path: Path) -> None:
    ds = _image(512, 512, np.zeros((512, 512), np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([_jpeg(12000, 12000)])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    # The message comes from the check before decoding; the decoder itself would have allocated
    # 12000 x 12000 and failed later with "decoded shape (12000, 12000) is not Rows x Columns".
    with pytest.raises(ImageDecodeError, match=r"bomb.dcm: compressed Pixel Data is 12000 x 12000, Rows"):
        load_dicom(path)

    ds.PixelData = encapsulate([_jpeg(512, 512)])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="blank image"):  # decoded: all zeros
        load_dicom(path)


def test_an_image_over_the_decode_limit_is_refused_naming_it(tmp_path: Path) -> None:
    ds = _image(64, 64, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    assert load_dicom(ds, max_pixels=64 * 64).shape == (64, 64)
    with pytest.raises(ImageDecodeError, match=r"64 x 64 x 1 values, over the decode limit 4095"):
        load_dicom(ds, max_pixels=64 * 64 - 1)


def test_a_multi_frame_image_is_decoded_frame_one_only() -> None:
    frames = np.stack([np.full((32, 32), 10 * (i + 1), np.uint16) for i in range(3)])
    frames[0, :16] = 1000
    ds = _image(32, 32, frames, NumberOfFrames=3)
    image = load_dicom(ds)
    assert image.shape == (32, 32)
    assert image.pixels[0, 0] == 1.0 and image.pixels[-1, -1] == 0.0  # frame 1: 1000 over 10


@pytest.mark.parametrize(
    "dtype, attrs",
    [
        (np.uint16, {}),
        (np.int16, {"RescaleSlope": 0.5, "RescaleIntercept": -1024}),
        (np.uint16, {"WindowCenter": 2000, "WindowWidth": 1500, "PhotometricInterpretation": "MONOCHROME1"}),
        (np.int16, {"WindowCenter": 0, "WindowWidth": 800, "VOILUTFunction": "SIGMOID", "RescaleSlope": 2.0}),
        (np.uint8, {"PresentationLUTShape": "INVERSE"}),
    ],
    ids=["plain", "rescale-signed", "window-mono1", "sigmoid-signed", "inverse-8bit"],
)
def test_the_presentation_table_equals_per_pixel_arithmetic(dtype: type, attrs: dict[str, object]) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    low, high = max(info.min, -30000), min(info.max, 30000)
    pixels = rng.integers(low, high, size=(96, 80), endpoint=True).astype(dtype)
    ds = _image(96, 80, pixels, **attrs)
    expected = _presentation(_to_grey(pixels, ds, "x"), ds, "x")
    np.testing.assert_array_equal(load_dicom(ds).pixels, expected)


def test_the_presentation_table_follows_a_modality_lut_sequence() -> None:
    ds = _image(40, 40, (np.arange(1600) % 256).astype(np.uint16).reshape(40, 40))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [int(v) for v in (np.sin(np.arange(256) / 40.0) * 1000 + 2000)]  # not monotonic
    ds.ModalityLUTSequence = [item]
    expected = _presentation(ds.pixel_array, ds, "x")
    np.testing.assert_array_equal(load_dicom(ds).pixels, expected)


def test_pydicom_reads_back_what_the_tests_build(tmp_path: Path) -> None:
    """The constructed datasets are valid Part 10 files, so the cases above are real inputs."""
    ds = _image(8, 8, np.ones((8, 8), np.uint16))
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "x.dcm").pixel_array.shape == (8, 8)
