"""The receive-side header check: what the node needs from a data set, read without its pixels.

:func:`inspect_file` (a received file, memory-mapped) or :func:`inspect_dataset` (bytes) parses
the data set *up to* Pixel Data and checks the SOP class, the UIDs, the sequence nesting depth,
the presence and the length of Pixel Data and the limits. A deflated data set is inflated with
a hard output cap (``max_instance_bytes``). The fast scanner handles little endian data sets;
pydicom parses whatever it refuses (and big endian), so its verdict is the reference
(tests/node/test_header_check.py compares the two).
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

from node.errors import InvalidInstanceError, StoreError
from node.ingest.status import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_OUT_OF_RESOURCES
from node.sop_classes import is_analysed
from node.store import data_set_offset, valid_uid
from pipelines.codestream import CODESTREAM_HEAD_BYTES, declared_frame_size

# pydicom and the writers read sequences recursively; the real chest samples nest at most 5 deep.
MAX_SEQUENCE_DEPTH = 16
_DEFER_BYTES = 1 << 20  # the pydicom fallback leaves larger values unread
# Items of encapsulated Pixel Data walked at most (Basic Offset Table included): the walk costs about
# 0.3 us per item, so 512 MiB of empty 8-byte items kept a listener busy ~20 s for one instance. Real
# objects hold one fragment per frame, or a few hundred for a large frame split in pieces.
MAX_FRAGMENTS = 1_000_000
_INFLATE_CHUNK = 1 << 20

PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}  # Float, Double Float, Pixel Data
# Explicit VR element headers (PS3.5 7.1.2), as pydicom defines them: a 4-byte length for these
# VRs, a 2-byte length for the short ones. Any other VR goes to pydicom, which refuses an unknown
# VR when the element is read.
LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
SHORT_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)


@dataclass(frozen=True)
class Header:
    """What the node needs from a received data set, read without touching Pixel Data."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    accession_number: str
    rows: int
    columns: int
    frames: int


def _pixel_element(buf: bytes | memoryview, pos: int, implicit: bool, little: bool) -> tuple[int, int, int]:
    """(tag, header length, value length) of the element at ``pos``."""
    order = "<" if little else ">"
    if len(buf) - pos < 8:
        raise InvalidInstanceError(
            "data set truncated inside the Pixel Data header", STATUS_CANNOT_UNDERSTAND
        )
    group, elem = struct.unpack_from(f"{order}HH", buf, pos)
    tag = (group << 16) | elem
    if implicit:
        (length,) = struct.unpack_from(f"{order}L", buf, pos + 4)
        return tag, 8, length
    vr = bytes(buf[pos + 4 : pos + 6])
    if vr in LONG_VRS:
        if len(buf) - pos < 12:
            raise InvalidInstanceError(
                "data set truncated inside the Pixel Data header", STATUS_CANNOT_UNDERSTAND
            )
        (length,) = struct.unpack_from(f"{order}L", buf, pos + 8)
        return tag, 12, length
    (length,) = struct.unpack_from(f"{order}H", buf, pos + 6)
    return tag, 8, length


# The attributes the receive path reads: (tag, keyword, VR kind) with "us" = unsigned short.
_WANTED = {
    0x00080016: ("SOPClassUID", "str"),
    0x00080018: ("SOPInstanceUID", "str"),
    0x00080050: ("AccessionNumber", "str"),
    0x0020000D: ("StudyInstanceUID", "str"),
    0x0020000E: ("SeriesInstanceUID", "str"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280008: ("NumberOfFrames", "str"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280100: ("BitsAllocated", "us"),
}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class _ScanError(Exception):
    """The fast scanner met something it does not handle; pydicom parses instead."""


def _scan_header(buf: bytes | memoryview, implicit: bool) -> tuple[dict[str, str], int]:
    """Read the top-level elements before Pixel Data of a little endian data set.

    A few microseconds per element instead of pydicom's full element construction: the
    receive path runs this for every instance. Sequences are walked item by item (PS3.5 7.5)
    to check their nesting depth, only the attributes in ``_WANTED`` are decoded. Returns
    (values, offset of the first pixel element or len(buf)).
    """
    fields: dict[str, str] = {}
    pos = _walk(buf, 0, len(buf), implicit, fields, top=True, depth=0)
    return fields, pos


@functools.lru_cache(maxsize=4096)
def _dictionary_sequence(tag: int) -> bool:
    """Implicit VR: whether the data dictionary says ``tag`` is a sequence (PS3.6)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _walk(
    buf: bytes | memoryview,
    pos: int,
    end: int,
    implicit: bool,
    fields: dict[str, str] | None,
    *,
    top: bool = False,
    depth: int,
) -> int:
    """Walk elements from ``pos``; stop at a pixel tag (top level), an item delimiter or ``end``."""
    unpack = struct.unpack_from
    while pos < end:
        if end - pos < 8:
            raise _ScanError("element header truncated")
        group, elem = unpack("<HH", buf, pos)
        tag = (group << 16) | elem
        if top and tag in PIXEL_TAGS:
            return pos
        if tag == _ITEM_END:
            return pos + 8
        sequence = False
        inner_implicit = implicit
        if implicit or group == 0xFFFE:
            (length,) = unpack("<L", buf, pos + 4)
            header = 8
            sequence = length == _UNDEFINED or (implicit and _dictionary_sequence(tag))
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                if end - pos < 12:
                    raise _ScanError("element header truncated")
                (length,) = unpack("<L", buf, pos + 8)
                header = 12
                sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
                inner_implicit = vr == b"UN"  # PS3.5 6.2.2: UN of undefined length is implicit VR
            elif vr in SHORT_VRS:
                (length,) = unpack("<H", buf, pos + 6)
                header = 8
            else:
                raise _ScanError(f"bad VR {vr!r}")
        value_at = pos + header
        if sequence:
            pos = _sequence(buf, value_at, length, end, inner_implicit, depth + 1)
            continue
        if length == _UNDEFINED:
            raise _ScanError("undefined length on a non-sequence element")
        if value_at + length > end:
            raise _ScanError("value runs past the end of the data set")
        if fields is not None and tag in _WANTED:
            name, kind = _WANTED[tag]
            raw = bytes(buf[value_at : value_at + length])
            if kind == "us":
                if length != 2:  # VM 1: pydicom reads other lengths as several values or none
                    raise _ScanError(f"{name} is {length} bytes")
                fields[name] = str(unpack("<H", raw, 0)[0])
            else:
                fields[name] = raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()
        pos = value_at + length
    return pos


def _sequence(buf: bytes | memoryview, pos: int, length: int, end: int, implicit: bool, depth: int) -> int:
    """Walk a sequence's items (defined or undefined length, PS3.5 7.5); returns the offset
    after it. Refuses nesting deeper than MAX_SEQUENCE_DEPTH: pydicom (the worker, the writers)
    reads sequences recursively, and a few hundred levels end in RecursionError."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise InvalidInstanceError(
            f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels", STATUS_DATASET_MISMATCH
        )
    unpack = struct.unpack_from
    stop = end if length == _UNDEFINED else pos + length
    if stop > end:
        raise _ScanError("sequence runs past the end of the data set")
    while pos + 8 <= stop:
        group, elem = unpack("<HH", buf, pos)
        (item_length,) = unpack("<L", buf, pos + 4)
        tag = (group << 16) | elem
        if tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM:
            raise _ScanError(f"unexpected tag {tag:08X} inside a sequence")
        if item_length == _UNDEFINED:
            pos = _walk(buf, pos + 8, stop, implicit, None, depth=depth)
        else:
            item_end = pos + 8 + item_length
            if item_end > stop:
                raise _ScanError("item runs past the end of its sequence")
            _walk(buf, pos + 8, item_end, implicit, None, depth=depth)
            pos = item_end
    if length == _UNDEFINED:
        raise _ScanError("sequence not terminated")
    return stop


class _ViewReader(io.RawIOBase):
    """A read-only file over a memoryview (an mmap of the received file): pydicom reads the
    header through it without the whole data set being copied into memory."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _pydicom_header(buf: bytes | memoryview, implicit: bool, little: bool) -> tuple[dict[str, str], int]:
    """The general parser (big endian, or whatever the fast scanner refused)."""
    fp = io.BufferedReader(_ViewReader(memoryview(buf)), 1 << 16)
    try:
        ds = read_dataset(
            fp,
            implicit,
            little,
            stop_when=lambda tag, vr, length: int(tag) in PIXEL_TAGS,
            defer_size=_DEFER_BYTES,
        )
        fields = {name: str(ds.get(name, "") or "") for name, _kind in _WANTED.values() if name in ds}
        pos = fp.tell()
        for _element in ds.iterall():  # converts every element: an unknown VR raises here, not in the worker
            pass
    except RecursionError as exc:
        raise InvalidInstanceError(
            f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels", STATUS_DATASET_MISMATCH
        ) from exc
    except Exception as exc:  # pydicom raises many types on garbage: all mean "cannot understand"
        raise InvalidInstanceError(
            f"data set cannot be parsed: {exc.__class__.__name__}: {exc}", STATUS_CANNOT_UNDERSTAND
        ) from exc
    if not len(ds):
        raise InvalidInstanceError("data set has no elements before Pixel Data", STATUS_CANNOT_UNDERSTAND)
    return fields, pos


def pixel_element_offset(path: Path, transfer_syntax: str) -> int | None:
    """Where the first pixel element of a stored Part 10 file starts (its end when it has none):
    from there two copies of one image hold the same bytes when their transfer syntax is the same.
    None for a deflated data set (its pixels are inside the deflate stream) or a file that does not
    parse."""
    ts = UID(transfer_syntax)
    if ts == DeflatedExplicitVRLittleEndian:
        return None
    try:
        offset = data_set_offset(path)
        with _mapped(path) as view:
            _fields, pos = _elements_before_pixels(view[offset:], ts.is_implicit_VR, ts.is_little_endian)
    except (OSError, ValueError, StoreError, InvalidInstanceError):
        return None
    return offset + pos


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    """The file memory-mapped read-only: only the pages read are loaded."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    try:
        yield view
    finally:
        view.release()
        try:
            mm.close()
        except BufferError:  # a slice escaped in an exception's traceback: the GC unmaps it
            pass


def inflate_bytes(raw: bytes | memoryview, max_bytes: int) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5) with a hard output cap:
    a few MiB on the wire may inflate to gigabytes (a deflate bomb)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(bytes(raw), max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInstanceError(
            f"deflated data set cannot be inflated: {exc}", STATUS_CANNOT_UNDERSTAND
        ) from exc
    if len(out) > max_bytes:
        raise InvalidInstanceError(
            f"deflated data set inflates beyond max_instance_bytes={max_bytes}", STATUS_OUT_OF_RESOURCES
        )
    return out


def inflate_file(src: Path, offset: int, dest: Path, max_bytes: int) -> None:
    """Inflate the deflated data set of ``src`` (from ``offset``) into ``dest``, 1 MiB at a
    time, refusing (0xA700) as soon as the output passes ``max_bytes``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        with open(src, "rb") as fin, open(dest, "wb") as fout:
            fin.seek(offset)
            while chunk := fin.read(_INFLATE_CHUNK):
                data = inflater.decompress(chunk, _INFLATE_CHUNK)
                while True:
                    total += len(data)
                    if total > max_bytes:
                        raise InvalidInstanceError(
                            f"deflated data set inflates beyond max_instance_bytes={max_bytes}",
                            STATUS_OUT_OF_RESOURCES,
                        )
                    fout.write(data)
                    if not inflater.unconsumed_tail:
                        break
                    data = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
            fout.write(inflater.flush())
    except zlib.error as exc:
        raise InvalidInstanceError(
            f"deflated data set cannot be inflated: {exc}", STATUS_CANNOT_UNDERSTAND
        ) from exc
    except OSError as exc:
        raise StoreError(f"cannot inflate into {dest}: {exc.strerror or exc}") from exc


def inspect_dataset(
    raw: bytes | memoryview,
    transfer_syntax: str,
    *,
    expected_sop_class: str | None,
    affected_sop_instance: str | None,
    max_bytes: int,
    max_pixels: int,
) -> Header:
    """Validate a data set held in memory; raise InvalidInstanceError with the status to return."""
    if len(raw) > max_bytes:
        raise InvalidInstanceError(
            f"instance is {len(raw)} bytes, over max_instance_bytes={max_bytes}", STATUS_OUT_OF_RESOURCES
        )
    ts = UID(transfer_syntax)
    buf: bytes | memoryview = raw
    if ts == DeflatedExplicitVRLittleEndian:
        buf = inflate_bytes(raw, max_bytes)
    return check_header(
        buf, ts, expected_sop_class=expected_sop_class, affected_sop_instance=affected_sop_instance,
        max_pixels=max_pixels,
    )


def inspect_file(
    path: Path,
    offset: int,
    transfer_syntax: str,
    *,
    expected_sop_class: str | None,
    affected_sop_instance: str | None,
    max_bytes: int,
    max_pixels: int,
) -> Header:
    """Validate a received Part 10 file whose data set starts at ``offset``.

    The file is memory-mapped: only the pages of the header, the Pixel Data element header
    and the encapsulated fragments' item headers are touched, never the pixel values, so a
    data set of any size costs a few pages of memory. A deflated data set is inflated (capped
    at ``max_bytes``) into a scratch file beside it, checked the same way, then removed.
    """
    size = path.stat().st_size - offset
    if size > max_bytes:
        raise InvalidInstanceError(
            f"instance is {size} bytes, over max_instance_bytes={max_bytes}", STATUS_OUT_OF_RESOURCES
        )
    if size <= 0:
        raise InvalidInstanceError("data set is empty", STATUS_CANNOT_UNDERSTAND)
    ts = UID(transfer_syntax)
    scratch: Path | None = None
    try:
        if ts == DeflatedExplicitVRLittleEndian:
            scratch = path.with_name(path.name + ".inflated")
            inflate_file(path, offset, scratch, max_bytes)
            path, offset = scratch, 0
        if path.stat().st_size <= offset:
            raise InvalidInstanceError("data set is empty", STATUS_CANNOT_UNDERSTAND)
        with _mapped(path) as view:
            return check_header(
                view[offset:], ts, expected_sop_class=expected_sop_class,
                affected_sop_instance=affected_sop_instance, max_pixels=max_pixels,
            )
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)


def _encapsulated_end(buf: bytes | memoryview, start: int) -> int:
    """Walk the fragments of encapsulated Pixel Data (PS3.5 A.4), reading 8 bytes per item;
    returns the offset after the Sequence Delimitation Item or raises (truncated, or more than
    :data:`MAX_FRAGMENTS` items)."""
    pos = start
    end = len(buf)
    items = 0
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHL", buf, pos)
        tag = (group << 16) | elem
        if tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED:
            break
        items += 1
        if items > MAX_FRAGMENTS:
            raise InvalidInstanceError(
                f"encapsulated Pixel Data in more than {MAX_FRAGMENTS} fragments", STATUS_OUT_OF_RESOURCES
            )
        pos += 8 + length
    raise InvalidInstanceError(
        "encapsulated Pixel Data truncated (no Sequence Delimitation Item)", STATUS_CANNOT_UNDERSTAND
    )


def _first_fragment(buf: bytes | memoryview, start: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of the first fragment after the Basic Offset Table (PS3.5 A.4)."""
    pos, end, item = start, len(buf), 0
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHL", buf, pos)
        if (group << 16) | elem != _ITEM or length == _UNDEFINED:
            return b""
        if item == 1:
            return bytes(buf[pos + 8 : pos + 8 + min(length, limit)])
        item += 1
        pos += 8 + length
    return b""


def _check_value_framing(buf: bytes | memoryview, start: int, length: int, ts: UID) -> None:
    """The value of a pixel element starting at ``start`` is all there: a defined length fits in the
    bytes received; an undefined one (encapsulated only) ends with its Sequence Delimitation Item."""
    if length == 0xFFFFFFFF:
        if not ts.is_compressed:
            raise InvalidInstanceError(
                "undefined-length Pixel Data in a native transfer syntax", STATUS_CANNOT_UNDERSTAND
            )
        _encapsulated_end(buf, start)
    elif start + length > len(buf):
        raise InvalidInstanceError(
            f"data set truncated: Pixel Data declares {length} bytes, {len(buf) - start} received",
            STATUS_CANNOT_UNDERSTAND,
        )


def _elements_before_pixels(
    buf: bytes | memoryview, implicit: bool, little: bool
) -> tuple[dict[str, str], int]:
    """The fast scanner for little endian data sets, pydicom for the rest and for whatever the
    scanner refuses (its error message is then the authoritative one)."""
    if little:
        try:
            return _scan_header(buf, implicit)
        except _ScanError:
            pass
    return _pydicom_header(buf, implicit, little)


def check_header(
    buf: bytes | memoryview,
    ts: UID,
    *,
    expected_sop_class: str | None,
    affected_sop_instance: str | None,
    max_pixels: int,
) -> Header:
    """The receive-side header check of a (non-deflated) data set.

    Parses the elements before Pixel Data (stop at (7FE0,xxxx)), then reads the
    Pixel Data element header by hand: a defined length must fit in the bytes received and
    cover Rows x Columns x Samples x Frames (native encoding); an encapsulated value must end
    with its Sequence Delimitation Item (PS3.5 A.4). Pixel values are never read here. The image
    checks (geometry, ``max_pixels``, the code stream's size) apply to the analysed radiograph
    classes only; an object that is stored only needs its UIDs and, when it has pixels, a whole
    pixel element.
    """
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    if ts == DeflatedExplicitVRLittleEndian:
        implicit, little = False, True
    fields, pos = _elements_before_pixels(buf, implicit, little)
    values = [
        fields.get(k, "")
        for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber")
    ]
    try:
        rows, columns = int(fields.get("Rows") or 0), int(fields.get("Columns") or 0)
        frames = int(fields.get("NumberOfFrames") or 1)
        samples = int(fields.get("SamplesPerPixel") or 1)
        bits = int(fields.get("BitsAllocated") or 0)
    except ValueError as exc:
        raise InvalidInstanceError(f"image geometry not readable: {exc}", STATUS_DATASET_MISMATCH) from exc
    sop_class, sop_instance, study, series, accession = values
    if not fields:
        raise InvalidInstanceError("data set has no elements before Pixel Data", STATUS_CANNOT_UNDERSTAND)
    for name, uid in (
        ("SOPClassUID", sop_class),
        ("SOPInstanceUID", sop_instance),
        ("StudyInstanceUID", study),
        ("SeriesInstanceUID", series),
    ):
        if not valid_uid(uid):
            raise InvalidInstanceError(f"{name} missing or not a valid UID: {uid!r}", STATUS_DATASET_MISMATCH)
    if expected_sop_class and sop_class != expected_sop_class:
        raise InvalidInstanceError(
            f"SOPClassUID {sop_class} differs from the presentation context's {expected_sop_class}",
            STATUS_DATASET_MISMATCH,
        )
    if affected_sop_instance and sop_instance != affected_sop_instance:
        raise InvalidInstanceError(
            f"SOPInstanceUID {sop_instance} differs from the request's {affected_sop_instance}",
            STATUS_DATASET_MISMATCH,
        )
    if not is_analysed(sop_class):
        # Kept, never decoded (node.sop_classes): only the framing of any pixel element is checked,
        # so the stored file is whole; a multi-frame CT over max_pixels is still a valid object.
        if pos < len(buf):
            _tag, header_len, length = _pixel_element(buf, pos, implicit, little)
            _check_value_framing(buf, pos + header_len, length, ts)
        return Header(sop_class, sop_instance, study, series, accession[:16], 0, 0, 0)
    if rows <= 0 or columns <= 0:
        raise InvalidInstanceError("Rows/Columns missing: not an image", STATUS_DATASET_MISMATCH)
    if bits <= 0:
        raise InvalidInstanceError("BitsAllocated missing: pixels cannot be decoded", STATUS_DATASET_MISMATCH)
    if rows * columns * frames > max_pixels:
        raise InvalidInstanceError(
            f"image is {rows}x{columns}x{frames} pixels, over max_pixels={max_pixels}",
            STATUS_OUT_OF_RESOURCES,
        )
    if pos >= len(buf):
        raise InvalidInstanceError("data set has no Pixel Data (7FE0,0010)", STATUS_DATASET_MISMATCH)
    tag, header_len, length = _pixel_element(buf, pos, implicit, little)
    if tag != 0x7FE00010:
        raise InvalidInstanceError(
            f"data set has no Pixel Data (7FE0,0010), found {Tag(tag)}", STATUS_DATASET_MISMATCH
        )
    start = pos + header_len
    _check_value_framing(buf, start, length, ts)
    if length == 0xFFFFFFFF:
        declared = declared_frame_size(ts, _first_fragment(buf, start, CODESTREAM_HEAD_BYTES))
        if declared is not None and declared[0] > 0 and declared != (rows, columns):
            # A decoder allocates what the code stream says: 1.7 MB of JPEG declaring 12000 x
            # 12000 cost the worker +660 MiB before the shape check, whatever Rows/Columns say.
            raise InvalidInstanceError(
                f"compressed Pixel Data is {declared[0]} x {declared[1]}, "
                f"Rows/Columns say {rows} x {columns}",
                STATUS_DATASET_MISMATCH,
            )
    else:
        expected = (rows * columns * samples * frames * bits + 7) // 8
        if not ts.is_compressed and length < expected:
            raise InvalidInstanceError(
                f"Pixel Data has {length} bytes, Rows x Columns x Samples x BitsAllocated needs {expected}",
                STATUS_DATASET_MISMATCH,
            )
    return Header(sop_class, sop_instance, study, series, accession[:16], rows, columns, frames)
