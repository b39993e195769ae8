"""The File Meta Information the node writes in front of a received data set (PS3.10 7.1)."""

from __future__ import annotations

import struct

from pydicom.uid import generate_uid

# A fixed UID derived from the product name under pydicom's UID root (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = str(generate_uid(entropy_srcs=["cxr-node implementation class"]))
IMPLEMENTATION_VERSION = "CXRNODE_01"


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 0x0002, group_elem, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, group_elem, vr, len(value)) + value


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str
) -> bytes:
    """Preamble, "DICM" and the File Meta Information group (PS3.10 7.1), encoded directly.

    The same content as pydicom's writer produces, about 30x faster; the receive path writes
    it in front of the data set bytes exactly as the peer sent them.
    """
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _meta_element(0x0010, b"UI", str(transfer_syntax).encode("ascii")),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
            _meta_element(0x0016, b"AE", source_aet.encode("ascii", "replace")[:16]),
        )
    )
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + body
