"""The file a C-STORE data set streams into (node.scp_transport.IncomingFile): with durability
"fsync" it is flushed in the background while the rest arrives, and a failed flush refuses the
instance (a later fsync through another descriptor may not report it)."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node import scp_transport
from node.scp_transport import EARLY_SYNC_BYTES, IncomingFile

CHUNK = 128 * 1024  # a dcmtk sender's P-DATA fragment


def _receive(tmp_path: Path, total: int, writeback: ThreadPoolExecutor | None) -> IncomingFile:
    incoming = IncomingFile(tmp_path, b"META", max_bytes=1 << 30, writeback=writeback)
    data = os.urandom(CHUNK)
    for _ in range(total // CHUNK):
        incoming.write(data)
    incoming.close()
    return incoming


def test_a_large_data_set_is_flushed_while_it_arrives(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as writeback:
        large = _receive(tmp_path, 4 * EARLY_SYNC_BYTES, writeback)
        small = _receive(tmp_path, EARLY_SYNC_BYTES // 2, writeback)
    assert large.error is None and large.early_flushes >= 1  # one flush in flight at a time
    assert small.early_flushes == 0
    assert Path(large.name).stat().st_size == 4 + 4 * EARLY_SYNC_BYTES
    no_writeback = _receive(tmp_path, 2 * EARLY_SYNC_BYTES, None)  # durability "os"
    assert no_writeback.early_flushes == 0 and no_writeback.error is None


def test_a_failed_flush_is_reported_by_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(scp_transport.os, "fdatasync", failing)
    with ThreadPoolExecutor(max_workers=1) as writeback:
        incoming = _receive(tmp_path, 2 * EARLY_SYNC_BYTES, writeback)
    assert incoming.early_flushes >= 1
    assert isinstance(incoming.error, OSError) and incoming.error.errno == errno.EIO
