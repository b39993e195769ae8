"""DICOM / PNG / JPEG to a :class:`~pipelines.results.SourceImage` in presentation polarity.

Pixel pipeline for DICOM (PS3.3 C.11 and PS3.4 N.2, in this order): decode Pixel Data with pydicom's
plugins (any transfer syntax they handle: JPEG, JPEG-LS, JPEG 2000, RLE, native), Modality LUT or
Rescale Slope/Intercept, then the first VOI LUT or window, scaled to [0, 1] over the VOI output range;
MONOCHROME1 (and MONOCHROME2 with Presentation LUT Shape INVERSE, C.11.6) is inverted so that air is
dark and bone bright. Without a VOI the stored range (min..max) is used.

Pixel spacing (C.7.6.2.1.1, C.8.11.7): ``PixelSpacing`` when present (calibrated in the patient
plane); else ``ImagerPixelSpacing`` divided by ``EstimatedRadiographicMagnificationFactor`` when that
is present; else ``ImagerPixelSpacing`` (at the detector: areas then overstate the patient's). The
:class:`~pipelines.results.SpacingSource` says which, because a measurement must say it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGBaseline8Bit

from pipelines.codestream import CODESTREAM_HEAD_BYTES, declared_frame_size
from pipelines.errors import ImageDecodeError
from pipelines.results import PixelSpacing, SourceImage, SpacingSource

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Objects that carry no radiograph even when they have Pixel Data.
_NOT_RADIOGRAPHS = {"SEG", "SR", "KO", "PR", "RTSTRUCT", "DOC"}
# Values one decoded frame may hold (Rows x Columns x Samples per Pixel): the node's receive limit.
DEFAULT_MAX_PIXELS = 100_000_000
# Syntaxes Pillow decodes first: libjpeg-turbo for JPEG Baseline; for JPEG 2000 its OpenJPEG, which
# decodes code blocks on OPJ_NUM_THREADS threads (pylibjpeg-openjpeg, pydicom's first choice, runs
# one). Both are exact where it matters: lossless JPEG 2000 decodes identically; the two JPEG IDCTs
# differ by at most one grey level.
_PILLOW_FIRST = frozenset({JPEGBaseline8Bit, JPEG2000Lossless, JPEG2000})
# OpenJPEG reads this at every decode; unset it uses one thread. A site may set its own value.
os.environ.setdefault("OPJ_NUM_THREADS", "ALL_CPUS")


def is_dicom_file(path: Path | str) -> bool:
    """True when the file has the DICOM preamble and "DICM" prefix (PS3.10 7.1)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _name(ds: Dataset, path: Path | str | None) -> str:
    if path is not None:
        return str(path)
    uid = ds.get("SOPInstanceUID", "without SOP Instance UID")
    return str(getattr(ds, "filename", None) or f"<dataset {uid}>")


def _spacing(ds: Dataset, where: str) -> PixelSpacing | None:
    def pair(keyword: str) -> tuple[float, float] | None:
        value = ds.get(keyword)
        if value is None or len(value) != 2:
            return None
        row, col = float(value[0]), float(value[1])
        if not (row > 0 and col > 0):
            log.warning("%s: ignoring non-positive %s %s", where, keyword, list(value))
            return None
        return row, col

    if (ps := pair("PixelSpacing")) is not None:
        return PixelSpacing(ps[0], ps[1], SpacingSource.PIXEL_SPACING)
    if (ips := pair("ImagerPixelSpacing")) is not None:
        factor = ds.get("EstimatedRadiographicMagnificationFactor")
        if factor is not None and float(factor) > 0:
            f = float(factor)
            return PixelSpacing(ips[0] / f, ips[1] / f, SpacingSource.IMAGER_PIXEL_SPACING_CORRECTED)
        return PixelSpacing(ips[0], ips[1], SpacingSource.IMAGER_PIXEL_SPACING)
    return None


def _voi_range(ds: Dataset) -> tuple[float, float] | None:
    """Output range of the VOI stage pydicom applies, or None when the dataset has no VOI."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom clips a LINEAR window to [y_min, y_max] (and SIGMOID tends to them): push two
        # extreme values through the same function to read the range it used.
        probe = apply_voi_lut(np.array([-1e15, 1e15]), ds, index=0)
        return float(probe[0]), float(probe[1])
    return None


def _to_grey(arr: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        # pydicom returns RGB for YBR_* by default; ITU-R BT.601 luma.
        log.info("%s: colour image (%s) converted to grey", where, photometric)
        return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    raise ImageDecodeError(f"{where}: unsupported Photometric Interpretation {photometric!r}")


def load_dicom(ds_or_path: Dataset | Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> SourceImage:
    """Decode a DICOM radiograph to a presentation-polarity float32 image in [0, 1].

    Raises :class:`ImageDecodeError` naming the file for a non-DICOM file, an object without a
    radiograph (SR, SEG, ...), an image over ``max_pixels`` (Rows x Columns x Samples per Pixel)
    or whose code stream declares another size, undecodable Pixel Data or a blank image.
    """
    path: Path | str | None = None
    if isinstance(ds_or_path, Dataset):
        ds = ds_or_path
    else:
        path = ds_or_path
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise ImageDecodeError(f"{path}: not a readable DICOM file: {exc}") from exc
    where = _name(ds, path)
    modality = str(ds.get("Modality", "")).upper()
    if modality in _NOT_RADIOGRAPHS:
        raise ImageDecodeError(f"{where}: a {modality} object is not a radiograph")
    if "PixelData" not in ds:
        raise ImageDecodeError(f"{where}: no Pixel Data (7FE0,0010)")
    frames = _check_decode_bounds(ds, where, max_pixels)
    try:
        # The first frame only: a multi-frame object is not decoded whole to analyse one frame.
        arr = _decode_first_frame(ds, frames)
    except Exception as exc:  # the decoder plugins raise many types (ValueError, RuntimeError, ...)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageDecodeError(f"{where}: cannot decode Pixel Data (transfer syntax {ts}): {exc}") from exc
    if frames > 1:
        log.warning("%s: %d frames, analysing the first only", where, frames)
    arr = _to_grey(np.asarray(arr), ds, where)
    rows, cols = int(ds.get("Rows", arr.shape[0])), int(ds.get("Columns", arr.shape[1]))
    if arr.ndim != 2 or arr.shape != (rows, cols):
        raise ImageDecodeError(f"{where}: decoded shape {arr.shape} is not Rows x Columns {rows}x{cols}")
    try:
        if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
            pixels = _presentation_by_table(arr, ds, where)
        else:
            pixels = _presentation(arr, ds, where)
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        raise ImageDecodeError(f"{where}: invalid Modality/VOI LUT attributes: {exc}") from exc
    if float(pixels.max()) <= float(pixels.min()):
        raise ImageDecodeError(f"{where}: blank image after the VOI window")
    return SourceImage(
        pixels=pixels,
        path=where,
        spacing=_spacing(ds, where),
        sop_instance_uid=str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds else None,
        dataset=ds,
    )


def _decode_first_frame(ds: Dataset, frames: int) -> np.ndarray:
    """The first frame: a multi-frame object is not decoded whole to analyse one frame.

    JPEG Baseline and JPEG 2000 go to Pillow first (``_PILLOW_FIRST``): libjpeg-turbo decodes a
    2446 x 2010 CR in 11 ms where pylibjpeg takes 55 ms; OpenJPEG on two threads decodes a
    1955 x 1841 JPEG 2000 CR in ~120 ms where pylibjpeg-openjpeg takes ~210 ms.
    """
    index = 0 if frames > 1 else None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts in _PILLOW_FIRST:
        try:
            return pixel_array(ds, index=index, decoding_plugin="pillow")
        except Exception:  # noqa: BLE001 - Pillow missing or refusing: pydicom's own choice decides
            log.debug("Pillow could not decode a %s frame; using pydicom's default plugin", UID(ts).name)
    return pixel_array(ds, index=index)


def _check_decode_bounds(ds: Dataset, where: str, max_pixels: int) -> int:
    """Refuse, before decoding, what would make the decoder allocate more than the bound.

    The output of one frame is Rows x Columns x Samples per Pixel values; a compressed frame is
    decoded to the size its code stream declares, which must therefore be Rows x Columns.
    Returns the number of frames.
    """
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"{where}: image geometry not readable: {exc}") from exc
    if rows <= 0 or cols <= 0:
        raise ImageDecodeError(f"{where}: Rows/Columns missing")
    if rows * cols * max(samples, 1) > max_pixels:
        raise ImageDecodeError(
            f"{where}: image is {rows} x {cols} x {samples} values, over the decode limit {max_pixels}"
        )
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and UID(ts).is_compressed:
        try:
            fragments = generate_fragments(ds.PixelData)
            next(fragments, None)  # the Basic Offset Table
            first = next(fragments, b"")
        except (ValueError, TypeError):  # not encapsulated: the decoder reports it
            first = b""
        declared = declared_frame_size(ts, bytes(first[:CODESTREAM_HEAD_BYTES]))
        if declared is not None and declared != (rows, cols):
            raise ImageDecodeError(
                f"{where}: compressed Pixel Data is {declared[0]} x {declared[1]}, "
                f"Rows/Columns say {rows} x {cols}"
            )
    return frames


def _presentation(arr: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    """Modality LUT, VOI, scaling to [0, 1] and polarity, applied to every pixel."""
    values = apply_modality_lut(arr, ds).astype(np.float64)
    voi_range = _voi_range(ds)
    if voi_range is not None:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
        low, high = voi_range
    else:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        raise ImageDecodeError(f"{where}: blank image (all pixels {low})")
    pixels = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if _inverted(ds):
        pixels = 1.0 - pixels
    return pixels


def _presentation_by_table(arr: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    """:func:`_presentation` for integer pixels, computed once per stored value in use.

    Every stage is a function of the stored value alone, so the same arithmetic on the at most
    65,536 values between the image's minimum and maximum, then one table lookup, gives the same
    result as per pixel. The table is indexed by the stored value's bit pattern (the array viewed
    unsigned, no widened copy) and read with ``np.take``: on a 2446 x 2010 CR the whole step takes
    about a tenth of the per-pixel arithmetic.
    """
    lowest, highest = int(arr.min()), int(arr.max())
    bits = 8 * arr.dtype.itemsize
    patterns = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    stored = np.arange(lowest, highest + 1, dtype=np.int64)
    slots = stored & ((1 << bits) - 1)  # where each stored value's bit pattern points
    stored = stored.astype(arr.dtype)
    if _voi_range(ds) is not None:
        in_use = _presentation(stored, ds, where)
    else:
        # Without a VOI the scaling uses the range of the values present, not of every value between.
        values = apply_modality_lut(stored, ds).astype(np.float64)
        if "ModalityLUTSequence" in ds:  # any shape: look at the values present
            present = np.bincount(patterns.ravel(), minlength=1 << bits)[slots] > 0
            low, high = float(values[present].min()), float(values[present].max())
        else:  # rescale slope and intercept: monotonic, the extremes are those of the lowest and highest
            low, high = sorted((float(values[0]), float(values[-1])))
        if not high > low:
            raise ImageDecodeError(f"{where}: blank image (all pixels {low})")
        in_use = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
        if _inverted(ds):
            in_use = 1.0 - in_use
    table = np.zeros(1 << bits, dtype=np.float32)
    table[slots] = in_use
    return np.take(table, patterns)


def _inverted(ds: Dataset) -> bool:
    """MONOCHROME1, or MONOCHROME2 with Presentation LUT Shape INVERSE (C.11.6): air is bright."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    shape = str(ds.get("PresentationLUTShape", "")).upper()
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")


def load_raster(path: Path | str) -> SourceImage:
    """A PNG/JPEG/TIFF/BMP file as a grey [0, 1] image (no spacing, no SOP Instance UID)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr: Any = np.asarray(img, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                pixels = arr / top
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                low, high = float(arr.min()), float(arr.max())
                pixels = (arr - low) / (high - low) if high > low else arr * 0
            else:
                pixels = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: not a readable image: {exc}") from exc
    except ImportError as exc:
        # ultralytics patches Image.open to retry unknown files as HEIF and fails importing pi_heif:
        # report PIL's own reason.
        cause = exc.__context__ if exc.__context__ is not None else exc
        raise ImageDecodeError(f"{path}: not a readable image: {cause}") from exc
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise ImageDecodeError(f"{path}: image of shape {pixels.shape} is not a 2-D radiograph")
    if float(pixels.max()) <= float(pixels.min()):
        raise ImageDecodeError(f"{path}: blank image")
    return SourceImage(pixels=np.clip(pixels, 0, 1).astype(np.float32), path=str(path))


def load_image(path: Path | str) -> SourceImage:
    """DICOM (by its "DICM" prefix or a .dcm/.dicom suffix) or a raster image (by its suffix)."""
    p = Path(path)
    if not p.is_file():
        raise ImageDecodeError(f"{path}: no such file")
    if is_dicom_file(p) or p.suffix.lower() in (".dcm", ".dicom", ""):
        return load_dicom(p)
    if p.suffix.lower() in RASTER_SUFFIXES:
        return load_raster(p)
    raise ImageDecodeError(f"{path}: neither DICOM nor a PNG/JPEG/TIFF/BMP image")
