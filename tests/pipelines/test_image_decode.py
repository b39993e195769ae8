"""DICOM / PNG decoding: polarity, true size, spacing source, every transfer syntax, bad input."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from chest_samples import CHEST_SAMPLES, lung_and_mediastinum_means
from pydicom.pixels import pixel_array
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pipelines.errors import ImageDecodeError
from pipelines.image import load_dicom, load_image
from pipelines.results import SpacingSource


@pytest.mark.parametrize("name", sorted(CHEST_SAMPLES))
def test_real_samples_lungs_dark_bones_bright_true_size(dicom_samples: Path, name: str) -> None:
    image = load_image(dicom_samples / name)
    ds = image.dataset
    assert ds.PhotometricInterpretation == CHEST_SAMPLES[name]
    assert image.shape == (ds.Rows, ds.Columns)
    assert image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    left, right, middle = lung_and_mediastinum_means(image.pixels)
    assert middle > left + 0.15 and middle > right + 0.15, (left, right, middle)
    raw_left, raw_right, raw_middle = lung_and_mediastinum_means(ds.pixel_array.astype(np.float64))
    if CHEST_SAMPLES[name] == "MONOCHROME1":  # the stored values are the other way round: we inverted
        assert raw_middle < min(raw_left, raw_right)
    assert image.sop_instance_uid == ds.SOPInstanceUID


def test_spacing_sources(dicom_samples: Path) -> None:
    orthanc = load_image(dicom_samples / "orthanctests_Monochrome1-Jpeg_CR.dcm")
    assert orthanc.spacing is not None
    assert orthanc.spacing.source is SpacingSource.PIXEL_SPACING
    assert orthanc.spacing.row_mm == pytest.approx(0.175)
    # RG1 carries PixelSpacing "0.000\\0.000": no usable spacing, and we say so rather than divide by 0
    assert load_image(dicom_samples / "pydicomdata_RG1_J2KI_CR_chest.dcm").spacing is None

    ds = pydicom.dcmread(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.25]
    assert load_dicom(ds).spacing.source is SpacingSource.IMAGER_PIXEL_SPACING
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    corrected = load_dicom(ds).spacing
    assert corrected.source is SpacingSource.IMAGER_PIXEL_SPACING_CORRECTED
    assert (corrected.row_mm, corrected.column_mm) == pytest.approx((0.16, 0.2))


def _twelve_bit_monochrome1(native: pydicom.Dataset) -> pydicom.Dataset:
    """The real sample as 12-bit MONOCHROME1 with a window: exercises 16-bit codecs and inversion."""
    ds = copy.deepcopy(native)  # Dataset.copy() is shallow: it would change ``native`` too
    arr = native.pixel_array.astype(np.uint16)
    ds.PixelData = (4095 - arr * 16).astype(np.uint16).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return ds


def _twelve_bit_signed(native: pydicom.Dataset) -> pydicom.Dataset:
    """The real sample as signed 12-bit (-2048..2047): exercises the decoders' sign handling."""
    ds = copy.deepcopy(native)  # Dataset.copy() is shallow: it would change ``native`` too
    arr = native.pixel_array.astype(np.int16)
    ds.PixelData = (arr * 16 - 2048).astype(np.int16).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = 0, 4096
    return ds


@pytest.fixture(scope="module")
def native_files(tmp_path_factory: pytest.TempPathFactory, chest_dicom: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("transfer-syntaxes")
    ds = pydicom.dcmread(chest_dicom)
    ds.decompress()  # -> Explicit VR Little Endian, native pixel data
    out = {"8bit": folder / "native8.dcm", "12bit": folder / "native12.dcm",
           "12bit-signed": folder / "native12s.dcm"}
    ds.save_as(out["8bit"], enforce_file_format=True)
    _twelve_bit_monochrome1(ds).save_as(out["12bit"], enforce_file_format=True)
    _twelve_bit_signed(ds).save_as(out["12bit-signed"], enforce_file_format=True)
    return out


def _encode(kind: str, source: Path, target: Path) -> str:
    """Re-encode ``source`` with pydicom's encoders or dcmtk (an independent implementation)."""
    if kind.endswith("-pydicom"):
        ds = pydicom.dcmread(source)
        uid = {"rle-pydicom": RLELossless, "j2k-lossless-pydicom": JPEG2000Lossless}[kind]
        ds.compress(uid)
        ds.save_as(target, enforce_file_format=True)
        return uid
    tool, args, uid = {
        "jpegls-lossless-dcmtk": ("dcmcjpls", ["+el"], JPEGLSLossless),
        "rle-dcmtk": ("dcmcrle", [], RLELossless),
        "jpeg-lossless-sv1-dcmtk": ("dcmcjpeg", ["+e1"], JPEGLosslessSV1),
    }[kind]
    if shutil.which(tool) is None:
        pytest.fail(f"dcmtk tool {tool} not installed (apt-get install dcmtk)")
    subprocess.run([tool, *args, str(source), str(target)], check=True, timeout=120, capture_output=True)
    return uid


@pytest.mark.parametrize("depth", ["8bit", "12bit", "12bit-signed"])
@pytest.mark.parametrize(
    "kind",
    ["rle-pydicom", "j2k-lossless-pydicom", "jpegls-lossless-dcmtk", "rle-dcmtk", "jpeg-lossless-sv1-dcmtk"],
)
def test_lossless_transfer_syntaxes_decode_identically(
    native_files: dict[str, Path], tmp_path: Path, kind: str, depth: str
) -> None:
    native = native_files[depth]
    target = tmp_path / f"{kind}.dcm"
    uid = _encode(kind, native, target)
    assert pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    reference = load_image(native)
    decoded = load_image(target)
    assert decoded.shape == reference.shape
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)
    left, right, middle = lung_and_mediastinum_means(decoded.pixels)
    assert middle > max(left, right) + 0.15  # the 12-bit copy is MONOCHROME1: inverted back
    if uid == JPEG2000Lossless:  # Pillow decodes first; pydicom's default plugin agrees exactly
        compressed = pydicom.dcmread(target)
        np.testing.assert_array_equal(pixel_array(compressed, decoding_plugin="pillow"),
                                      pixel_array(compressed, decoding_plugin="pylibjpeg"))


def test_window_maps_to_unit_range_and_inverse_presentation_lut(native_files: dict[str, Path]) -> None:
    ds = pydicom.dcmread(native_files["12bit"])
    ds.PhotometricInterpretation = "MONOCHROME2"
    stored = ds.pixel_array.astype(np.float64)
    ds.WindowCenter, ds.WindowWidth = 1000.5, 1001  # LINEAR: stored 500 -> 0, 1500 -> 1 (PS3.3 C.11.2.1.2)
    pixels = load_dicom(ds).pixels
    assert np.all(pixels[stored <= 500] == 0.0)
    assert np.all(pixels[stored >= 1500] == 1.0)
    inside = (stored > 600) & (stored < 1400)
    np.testing.assert_allclose(pixels[inside], (stored[inside] - 500) / 1000, atol=2e-3)
    ds.PresentationLUTShape = "INVERSE"
    np.testing.assert_allclose(load_dicom(ds).pixels, 1.0 - pixels, atol=1e-6)


def test_rescale_slope_intercept_is_applied_before_the_window(native_files: dict[str, Path]) -> None:
    ds = pydicom.dcmread(native_files["12bit"])
    ds.PhotometricInterpretation = "MONOCHROME2"
    stored = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 1000.5, 2001  # on rescaled values 0..2000
    pixels = load_dicom(ds).pixels
    rescaled = stored * 2 - 1000
    inside = (rescaled > 100) & (rescaled < 1900)
    np.testing.assert_allclose(pixels[inside], rescaled[inside] / 2000, atol=2e-3)


def test_png_input(chest_png: Path) -> None:
    image = load_image(chest_png)
    assert image.dataset is None and image.sop_instance_uid is None and image.spacing is None
    assert max(image.shape) == 512
    left, right, middle = lung_and_mediastinum_means(image.pixels)
    assert middle > min(left, right)


@pytest.mark.parametrize(
    "maker, reason",
    [
        (lambda p, samples: p.write_text("not an image"), "not a readable"),
        (lambda p, samples: shutil.copy(samples / "highdicom_sr_document.dcm", p), "SR object is not"),
        (lambda p, samples: shutil.copy(samples / "highdicom_seg_image_cr_binary.dcm", p), "SEG object"),
        (lambda p, samples: p.write_bytes((samples / "txv_siim_ptx_CR_chest_PA.dcm").read_bytes()[:40_000]),
         "no Pixel Data"),  # pydicom drops an unterminated encapsulated Pixel Data element
    ],
    ids=["text", "sr", "seg", "truncated-jpeg"],
)
def test_bad_input_names_the_file(tmp_path: Path, dicom_samples: Path, maker, reason: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.dcm"
    maker(bad, dicom_samples)
    with pytest.raises(ImageDecodeError) as info:
        load_image(bad)
    assert str(bad) in str(info.value) and reason in str(info.value)


def test_bad_png_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ImageDecodeError, match="broken.png: not a readable image"):
        load_image(bad)
    with pytest.raises(ImageDecodeError, match="missing.dcm: no such file"):
        load_image(tmp_path / "missing.dcm")


def test_truncated_native_pixel_data(native_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "short.dcm"
    bad.write_bytes(native_files["12bit"].read_bytes()[:-5000])
    with pytest.raises(ImageDecodeError, match="short.dcm: cannot decode Pixel Data"):
        load_image(bad)
