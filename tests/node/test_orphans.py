"""Files that no row names (a kill between rename and commit) are swept once they are old enough."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nodekit import wait_for
from pydicom.uid import generate_uid

from node.config import parse_config
from node.orphans import GRACE_SECONDS, remove_orphan_files
from node.repository import InstanceRecord, Repository
from node.service import NodeService
from node.store import InstanceStore

HOUR = 3600.0



def _file(store: InstanceStore, *, age: float) -> tuple[str, str]:
    uid = generate_uid()
    relpath, _ = store.write(uid, b"DICM" + b"\0" * 96)
    then = time.time() - age
    os.utime(store.path(relpath), (then, then))
    return uid, relpath


def _row(repo: Repository, uid: str, relpath: str) -> None:
    repo.record_instances([InstanceRecord(
        sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(), transfer_syntax_uid="1.2.840.10008.1.2.1", path=relpath,
        size_bytes=100, received_at=time.time() - 3 * HOUR)])


def test_only_old_files_without_a_row_are_removed(repo: Repository, tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances", fsync=False)
    kept = _file(store, age=3 * HOUR)
    _row(repo, *kept)
    orphans = [_file(store, age=3 * HOUR) for _ in range(3)]
    young = _file(store, age=60)  # perhaps between its rename and its commit right now
    incoming = store.incoming / "partial"
    incoming.write_bytes(b"x")  # being received: not the sweep's (remove_temporaries at start)

    assert remove_orphan_files(repo, store) == 3
    assert store.path(kept[1]).exists() and store.path(young[1]).exists() and incoming.exists()
    assert not any(store.path(relpath).exists() for _, relpath in orphans)
    assert remove_orphan_files(repo, store) == 0
    assert remove_orphan_files(repo, store, now=time.time() + GRACE_SECONDS) == 1  # the young one, later


def test_many_files_are_checked_in_chunks(repo: Repository, tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances", fsync=False)
    files = [_file(store, age=2 * HOUR) for _ in range(1203)]
    for uid, relpath in files[::2]:
        _row(repo, uid, relpath)
    assert remove_orphan_files(repo, store) == 601
    assert sum(store.path(relpath).exists() for _, relpath in files) == 602


def test_serve_sweeps_at_start(tmp_path: Path) -> None:
    config = parse_config({"node": {"data_dir": str(tmp_path / "var")}})
    service = NodeService(config, workers=0, listen=False, deliver=False,
                          analyzer_factory=lambda: None)  # type: ignore[arg-type,return-value]
    _, orphan = _file(service.store, age=2 * HOUR)
    service.start()
    try:
        wait_for(lambda: not service.store.path(orphan).exists(), timeout=20, what="orphan removed")
    finally:
        service.stop(timeout=5)
