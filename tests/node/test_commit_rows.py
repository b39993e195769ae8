"""One way of turning a file into an instance row (node.ingest.commit.durable_record), for received
instances and for the worker's result objects: the file is renamed into place and, with durability
"fsync", its data and its directory are fsynced before the row exists; the row describes the file."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from nodekit import make_dx
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.ingest import Header, file_meta_bytes
from node.ingest.commit import durable_record, receive_record, store_result
from node.results.sr import not_analysed_report
from node.store import InstanceStore, encode_part10


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What os.fsync was called on (the store's files and directories), in order."""
    called: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        called.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return called


def test_a_result_object_is_durable_before_its_row_is_returned(tmp_path: Path, fsyncs: list[str]) -> None:
    store = InstanceStore(tmp_path / "instances", fsync=True)
    report = not_analysed_report(make_dx(generate_uid()), "Image not analysed by the AI: test.")
    record = store_result(store, report, accession_number="ACC1")
    path = store.path(record.path)
    assert str(path) in fsyncs and str(path.parent) in fsyncs  # data and directory entry
    assert record.derived and record.accession_number == "ACC1"
    assert record.size_bytes == path.stat().st_size
    stored = pydicom.dcmread(path)
    assert (record.sop_instance_uid, record.sop_class_uid, record.study_instance_uid) == (
        stored.SOPInstanceUID, stored.SOPClassUID, stored.StudyInstanceUID)
    assert (record.series_instance_uid, record.transfer_syntax_uid) == (
        stored.SeriesInstanceUID, stored.file_meta.TransferSyntaxUID)
    assert not list(path.parent.glob(".*.tmp"))  # no temporary left beside it


def test_a_received_instance_goes_the_same_way(tmp_path: Path, fsyncs: list[str]) -> None:
    """The receive path's row (receive_record) is durable_record's, with the header's identity."""
    store = InstanceStore(tmp_path / "instances", fsync=True)
    ds = make_dx(generate_uid(), accession="ACC2")
    data = encode_part10(ds)
    meta = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "TESTSCU")
    header = Header(sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID,
                    study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                    accession_number="ACC2", rows=int(ds.Rows), columns=int(ds.Columns), frames=1)
    pending = store.begin_write(ds.SOPInstanceUID, meta, data)
    record = receive_record(header, pending, size=len(meta) + len(data),
                            transfer_syntax=ExplicitVRLittleEndian, calling_aet="TESTSCU-WITH-A-LONG-NAME")
    path = store.path(record.path)
    assert str(path) in fsyncs and str(path.parent) in fsyncs
    assert not record.derived and record.calling_aet == "TESTSCU-WITH-A-L"  # AE title: 16 characters
    assert (record.sop_instance_uid, record.accession_number, record.size_bytes) == (
        ds.SOPInstanceUID, "ACC2", path.stat().st_size)

    relaxed = InstanceStore(tmp_path / "os", fsync=False)  # durability "os": renamed, not fsynced
    fsyncs.clear()
    other = durable_record(relaxed.begin_write(ds.SOPInstanceUID, data), sop_instance_uid=ds.SOPInstanceUID,
                           sop_class_uid=ds.SOPClassUID, study_instance_uid=ds.StudyInstanceUID,
                           series_instance_uid=ds.SeriesInstanceUID, size=len(data),
                           transfer_syntax_uid=ExplicitVRLittleEndian)
    assert fsyncs == [] and relaxed.path(other.path).is_file()
