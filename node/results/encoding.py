"""Transfer syntaxes of result objects: which ones an object can be sent in, and re-encoding it.

The store keeps each result object in one transfer syntax (the one it was written in). A
destination may accept another one only (dcmtk ``storescp`` without options and many archives
accept storage only in uncompressed syntaxes; others ask for compression), so delivery proposes
every syntax an object can be produced in and re-encodes it for the one accepted (PS3.8 9.3.2.2,
PS3.5 10). Every re-encoding here is lossless: the pixels a destination receives are the stored
pixels, with the attributes that describe them made consistent (a 1-bit SEG stays 1-bit, bit
packed, PS3.5 8.1.1; a JPEG 2000 secondary capture in YBR_RCT becomes RGB, PS3.5 8.2.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import pydicom
from pydicom.pixels import pack_bits
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Lossless compressed syntaxes the node can encode an object with 8 or 16 bits per sample in
# (pydicom's encoders: pylibjpeg-openjpeg, pylibjpeg-rle / pydicom, pyjpegls).
COMPRESSIBLE = (JPEG2000Lossless, RLELossless, JPEGLSLossless)
# What a destination's ``transfer_syntaxes`` list may name: these UIDs or their keywords.
SUPPORTED = (*UNCOMPRESSED, *COMPRESSIBLE)
_BY_NAME = {uid.keyword: uid for uid in SUPPORTED}


class EncodingError(ValueError):
    """A result object cannot be produced in the requested transfer syntax."""


def parse_transfer_syntax(value: str) -> UID:
    """A configured transfer syntax, given as a UID or a pydicom keyword (``JPEG2000Lossless``)."""
    uid = _BY_NAME.get(value.strip()) or value.strip()
    if uid not in SUPPORTED:
        known = ", ".join(f"{u.keyword} ({u})" for u in SUPPORTED)
        raise EncodingError(f"transfer syntax {value!r} is not one the node can send; known: {known}")
    return UID(uid)


def producible(stored: str, *, has_pixels: bool, bits_allocated: int = 0) -> tuple[UID, ...]:
    """Every syntax an object stored in ``stored`` can be sent in, stored first.

    Decompression is always possible; compression only for pixel data of 8 or 16 bits (a BINARY
    SEG is 1-bit: highdicom alone encodes it, so it goes as stored or uncompressed).
    """
    out = [UID(stored), *UNCOMPRESSED]
    if has_pixels and bits_allocated in (8, 16):
        out += COMPRESSIBLE
    return tuple(dict.fromkeys(out))


def proposal(stored: str, preferred: Sequence[str], *, has_pixels: bool,
             bits_allocated: int = 0) -> tuple[UID, ...]:
    """The syntaxes to propose for one object, best first.

    A destination's preference list comes first (the entries this object can be produced in),
    then the stored syntax (sent as it is, no work), then Explicit and Implicit VR Little Endian,
    which every Storage SCP accepts (Implicit VR LE is the DICOM default, PS3.5 10.1).
    """
    can = producible(stored, has_pixels=has_pixels, bits_allocated=bits_allocated)
    wanted = [UID(ts) for ts in preferred if UID(ts) in can]
    return tuple(dict.fromkeys([*wanted, UID(stored), *UNCOMPRESSED]))


def reencode(ds: pydicom.Dataset, target: str) -> pydicom.Dataset:
    """``ds`` (read from the store, changed in place) encoded in ``target``, losslessly."""
    target = UID(target)
    current = UID(ds.file_meta.TransferSyntaxUID)
    if current == target:
        return ds
    if "PixelData" in ds:
        if current.is_compressed:
            _decompress(ds)
        if target.is_compressed:
            if int(ds.BitsAllocated) not in (8, 16):
                raise EncodingError(f"{ds.SOPInstanceUID}: cannot encode {ds.BitsAllocated}-bit pixel data "
                                    f"in {target.name}")
            # Lossless: the same SOP Instance (PS3.4 B.4.1: a lossless re-encoding keeps the UID);
            # pydicom would make a new UID by default.
            ds.compress(target, generate_instance_uid=False)
            return ds
    elif target.is_compressed:
        raise EncodingError(f"{ds.SOPInstanceUID}: no pixel data to encode in {target.name}")
    ds.file_meta.TransferSyntaxUID = target
    return ds


def _decompress(ds: pydicom.Dataset) -> None:
    """Native pixel data with consistent attributes (PS3.5 8.1.1, 8.2).

    pydicom's ``decompress`` writes one byte per pixel and leaves Bits Allocated 1 as it was, so a
    BINARY SEG (PS3.3 C.8.20.2: Bits Allocated 1) is decoded and bit-packed here instead.
    """
    if int(ds.BitsAllocated) == 1:
        frames = ds.pixel_array
        ds.PixelData = pack_bits(frames)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = False
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return
    # JPEG 2000 YBR_RCT -> RGB, Planar Configuration 0; same SOP Instance UID (lossless)
    ds.decompress(as_rgb=True, generate_instance_uid=False)
