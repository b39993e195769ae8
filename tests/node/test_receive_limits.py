"""Memory bounded by configuration whatever the peer sends (a deflate bomb was inflated in memory
and acknowledged; a 1.2 GiB data set cost +5 GB before it was refused). The node runs as its
own process so that its peak resident memory (VmHWM) can be read from /proc."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from nodekit import DX_PRESENTATION, NodeProcess, free_port, make_dx, node_toml
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

_config.STORE_SEND_CHUNKED_DATASET = True  # send files as their bytes, never decoded by the sender

MAX_INSTANCE = 64 * 2**20


def vm_hwm_mib(pid: int) -> float:
    """Peak resident set size of a process (kernel's VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    config = tmp / "node.toml"
    config.write_text(
        node_toml(tmp / "var", port, node={"max_instance_bytes": MAX_INSTANCE}, worker={"workers": 0})
    )
    proc = NodeProcess(config, port, tmp / "node.log").start()
    yield proc
    proc.terminate()


def _send(node: NodeProcess, path: Path, syntax: str) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION, [syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE")
    assert assoc.is_established
    status = int(assoc.send_c_store(path).Status)
    assoc.release()
    return status


def _header_bytes(ds: pydicom.Dataset) -> bytes:
    """The data set's elements before Pixel Data, Explicit VR Little Endian."""
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    head = pydicom.Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            head.add(elem)
    write_dataset(buf, head)
    return buf.getvalue()


def _part10(path: Path, ds: pydicom.Dataset, syntax: str, body_writer) -> Path:  # noqa: ANN001
    ds.file_meta.TransferSyntaxUID = syntax
    with path.open("wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, ds.file_meta)
        body_writer(f)
    return path


def _warm_up(node: NodeProcess, tmp: Path) -> float:
    ds = make_dx(generate_uid())
    path = tmp / "warm.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _send(node, path, ExplicitVRLittleEndian) == 0x0000
    return vm_hwm_mib(node.proc.pid)


def test_streamed_instance_is_stored_as_sent_with_our_file_meta(node: NodeProcess, tmp_path: Path) -> None:
    ds = make_dx(generate_uid(), rows=1024, cols=1024)  # 2 MiB: several PDUs
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _send(node, path, ExplicitVRLittleEndian) == 0x0000
    stored = list((Path(node.config_path).parent / "var").rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert len(stored) == 1
    got = pydicom.dcmread(stored[0])
    assert got.PixelData == ds.PixelData
    assert got.file_meta.SourceApplicationEntityTitle == "TESTSCU"
    assert not list((Path(node.config_path).parent / "var").rglob(".rx-*"))


def test_deflate_bomb_is_refused_with_bounded_memory(node: NodeProcess, tmp_path: Path) -> None:
    baseline = _warm_up(node, tmp_path)
    inflated = 1024 * 2**20  # 1 GiB of zeros behind about 1 MiB on the wire
    ds = make_dx(generate_uid())
    ds.Rows, ds.Columns = 16384, 32768
    head = b"\xe0\x7f\x10\x00OW\x00\x00" + inflated.to_bytes(4, "little")
    # One deflated MiB of zeros, repeated: each full-flushed piece starts on a byte boundary and
    # refers to no earlier bytes, so the pieces concatenate into one valid raw deflate stream (the
    # same ~1000:1 bomb as compressing the whole GiB, without spending seconds deflating it here).
    mib = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = mib.compress(bytes(2**20)) + mib.flush(zlib.Z_FULL_FLUSH)

    def body(f) -> None:  # noqa: ANN001
        start = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        f.write(start.compress(_header_bytes(ds) + head) + start.flush(zlib.Z_FULL_FLUSH))
        for _ in range(inflated // 2**20):
            f.write(zeros)
        f.write(zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush())  # the final, empty block

    path = _part10(tmp_path / "bomb.dcm", ds, DeflatedExplicitVRLittleEndian, body)
    assert path.stat().st_size < 4 * 2**20
    assert _send(node, path, DeflatedExplicitVRLittleEndian) == 0xA700
    peak = vm_hwm_mib(node.proc.pid)
    print(f"deflate bomb ({path.stat().st_size} B -> {inflated} B): peak RSS +{peak - baseline:.1f} MiB")
    assert peak - baseline < 48, (baseline, peak)
    ok = make_dx(generate_uid())
    ok.save_as(tmp_path / "ok.dcm", enforce_file_format=True)
    assert _send(node, tmp_path / "ok.dcm", ExplicitVRLittleEndian) == 0x0000


@pytest.mark.slow  # 1.2 GiB through loopback
def test_data_set_over_max_instance_bytes_is_refused_while_it_arrives(
    node: NodeProcess, tmp_path: Path
) -> None:
    baseline = _warm_up(node, tmp_path)
    size = 1200 * 2**20  # 1.2 GiB of Pixel Data (a sparse file: costs no disk here)
    ds = make_dx(generate_uid())
    ds.Rows, ds.Columns = 20000, 31457

    def body(f) -> None:  # noqa: ANN001
        f.write(_header_bytes(ds))
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little"))
        f.truncate(f.tell() + size)

    path = _part10(tmp_path / "huge.dcm", ds, ExplicitVRLittleEndian, body)
    assert _send(node, path, ExplicitVRLittleEndian) == 0xA700
    peak = vm_hwm_mib(node.proc.pid)
    print(f"1.2 GiB data set: peak RSS +{peak - baseline:.1f} MiB")
    assert peak - baseline < 48, (baseline, peak)
    data_dir = Path(node.config_path).parent / "var"
    assert not list(data_dir.rglob(".rx-*")), "the refused data set's bytes were kept"
    assert not list(data_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))


def test_jpeg_code_stream_larger_than_rows_columns_is_refused(node: NodeProcess, tmp_path: Path) -> None:
    """A JPEG declaring 12000 x 12000 inside a 512 x 512 image would make the worker's decoder
    allocate the code stream's size (+660 MiB measured): refused at receive with 0xA900."""
    import io

    import numpy as np
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    def jpeg(rows: int, cols: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((rows, cols), np.uint8)).save(buf, format="JPEG", quality=50)
        return buf.getvalue()

    baseline = _warm_up(node, tmp_path)
    for (rows, cols), expected in (((12000, 12000), 0xA900), ((512, 512), 0x0000)):
        ds = make_dx(generate_uid(), rows=512, cols=512)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([jpeg(rows, cols)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        path = tmp_path / f"jpeg-{rows}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert _send(node, path, JPEGBaseline8Bit) == expected
    peak = vm_hwm_mib(node.proc.pid)
    print(f"JPEG declaring 12000 x 12000: peak RSS +{peak - baseline:.1f} MiB")
    assert peak - baseline < 48, (baseline, peak)


def test_pixel_data_in_a_million_empty_fragments_is_refused(node: NodeProcess, tmp_path: Path) -> None:
    """Each fragment costs the header check a step: 512 MiB of empty 8-byte items kept a listener
    busy for about 20 s. Past MAX_FRAGMENTS items the instance is refused 0xA700; a frame in a few
    thousand fragments (some encoders split large frames) is still taken."""
    import struct

    from pydicom.uid import JPEGBaseline8Bit

    from node.ingest.header import MAX_FRAGMENTS

    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    for fragments, expected in ((MAX_FRAGMENTS + 1, 0xA700), (4000, 0x0000)):
        ds = make_dx(generate_uid(), rows=64, cols=64)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        head = _header_bytes(ds)
        pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + item * (fragments + 1) + end

        def body(f, head: bytes = head, pixels: bytes = pixels) -> None:  # noqa: ANN001
            f.write(head + pixels)

        path = _part10(tmp_path / f"fragments-{fragments}.dcm", ds, JPEGBaseline8Bit, body)
        assert _send(node, path, JPEGBaseline8Bit) == expected, fragments
