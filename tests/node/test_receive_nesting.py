"""Sequences nested deeper than the node reads safely (a few hundred levels were acknowledged and
then failed the study's job with RecursionError; deeper ones got 0xC001 "retry" with a
3,000-line traceback): refused at receive with 0xA900 and one log line, never 0xC001."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from nodekit import DX_PRESENTATION, make_dx
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from test_scp import scu, start_service

from node.ingest import MAX_SEQUENCE_DEPTH
from node.service import NodeService

_ITEM_UNDEFINED = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def nested_sequence(depth: int, *, defined: bool, implicit: bool) -> bytes:
    """(0040,A730) Content Sequence nested ``depth`` levels, one item per level."""
    inner = b""
    for _ in range(depth):
        if defined:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
            head = struct.pack("<HHL", 0x0040, 0xA730, len(item)) if implicit else (
                struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, len(item))
            )
            inner = head + item
        else:
            head = struct.pack("<HHL", 0x0040, 0xA730, 0xFFFFFFFF) if implicit else (
                struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
            )
            inner = head + _ITEM_UNDEFINED + inner + _ITEM_END + _SEQ_END
    return inner


def crafted(tmp: Path, depth: int, *, defined: bool = False, syntax: str = ExplicitVRLittleEndian) -> Path:
    """A DX instance whose data set carries the nested sequence between its header and Pixel Data."""
    implicit = syntax == ImplicitVRLittleEndian
    ds = make_dx(generate_uid())
    ds.file_meta.TransferSyntaxUID = syntax
    pixels = ds.PixelData
    del ds.PixelData
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, implicit
    write_dataset(head, ds)
    pixel = DicomBytesIO()
    pixel.is_little_endian, pixel.is_implicit_VR = True, implicit
    tail = pydicom.Dataset()
    tail.PixelData = pixels
    tail["PixelData"].VR = "OW"
    write_dataset(pixel, tail)
    path = tmp / f"nested-{depth}-{'def' if defined else 'undef'}-{'i' if implicit else 'e'}.dcm"
    with path.open("wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, ds.file_meta)
        f.write(head.getvalue())
        f.write(nested_sequence(depth, defined=defined, implicit=implicit))
        f.write(pixel.getvalue())
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    service = start_service(tmp_path_factory.mktemp("nesting"))
    yield service
    service.stop(timeout=10)


def _send(node: NodeService, path: Path, syntax: str) -> int:
    assoc = scu(node, (DX_PRESENTATION, [syntax]))
    assert assoc.is_established
    status = int(assoc.send_c_store(path).Status)
    assoc.release()
    return status


@pytest.mark.parametrize(
    ("depth", "defined", "syntax"),
    [
        (MAX_SEQUENCE_DEPTH + 1, False, ExplicitVRLittleEndian),
        (300, False, ExplicitVRLittleEndian),
        (300, True, ExplicitVRLittleEndian),
        (300, True, ImplicitVRLittleEndian),
        (5000, False, ExplicitVRLittleEndian),
        (5000, False, ImplicitVRLittleEndian),
    ],
)
def test_deep_nesting_is_refused_with_a900_and_one_log_line(
    node: NodeService,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    depth: int,
    defined: bool,
    syntax: str,
) -> None:
    path = crafted(tmp_path, depth, defined=defined, syntax=syntax)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID if depth < 100 else None
    with caplog.at_level(logging.INFO):
        assert _send(node, path, syntax) == 0xA900
    failures = [r for r in caplog.records if "store.failed" in r.getMessage()]
    assert len(failures) == 1 and "nested deeper" in failures[0].getMessage()
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert len(failures[0].getMessage().splitlines()) == 1
    if uid:
        assert node.repo.find_instance(uid) is None


def test_nesting_within_the_limit_is_stored(node: NodeService, tmp_path: Path) -> None:
    path = crafted(tmp_path, MAX_SEQUENCE_DEPTH, defined=False)
    assert _send(node, path, ExplicitVRLittleEndian) == 0x0000
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    record = node.repo.find_instance(ds.SOPInstanceUID)
    assert record is not None
    assert node.store.path(record.path).read_bytes()[-1000:] == path.read_bytes()[-1000:]


def test_real_samples_nest_within_the_limit(dicom_samples: Path) -> None:
    """The limit leaves room: the deepest real sample (an SR) nests 5 levels."""

    def depth(ds: pydicom.Dataset) -> int:
        return max(
            [1 + depth(item) for elem in ds if elem.VR == "SQ" for item in elem.value], default=0
        )

    depths = [depth(pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted(dicom_samples.glob("*.dcm"))]
    assert depths and max(depths) < MAX_SEQUENCE_DEPTH // 2
