"""The frame size a compressed code stream declares, read from its first bytes.

A decoder allocates what the code stream's own header says (JPEG SOF, JPEG-LS SOF55, JPEG 2000
SIZ), whatever Rows and Columns say: 1.7 MB of JPEG declaring 12000 x 12000 pixels costs a
decoder some 660 MiB. Both the receive-side header check (``node.ingest.header``) and the decoder
(:mod:`pipelines.image`) compare this size with Rows x Columns before any pixel is decoded.
"""

from __future__ import annotations

import struct

from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

HTJ2K_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
# JPEG markers before SOF (tables, APPn segments) fit in the first 64 KiB of a code stream.
CODESTREAM_HEAD_BYTES = 1 << 16


def declared_frame_size(transfer_syntax: str, stream: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 code stream declares; None when not read.

    ``stream`` is the start of the first fragment after the Basic Offset Table (PS3.5 A.4);
    :data:`CODESTREAM_HEAD_BYTES` of it is enough.
    """
    ts = UID(transfer_syntax)
    if ts in JPEG2000TransferSyntaxes or ts in HTJ2K_TRANSFER_SYNTAXES:
        # PS3.5 A.4.4 / ISO 15444-1 A.5.1: SOC, then SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz.
        if len(stream) >= 24 and stream[:4] == b"\xff\x4f\xff\x51":
            xsiz, ysiz, xo, yo = struct.unpack_from(">LLLL", stream, 8)
            return ysiz - yo, xsiz - xo
        return None
    if ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        info = _get_jpg_parameters(stream)
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
    return None
