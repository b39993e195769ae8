"""Duplicate SOP Instance UIDs (issue: a resend with other content replaced the stored file while
its row kept the first copy's study): the stored file and its row always agree; a resend of the
same object, byte-identical or re-encoded by another toolkit or in another transfer syntax, is
acknowledged without new work; another object under the UID (another patient, study or pixel
grid, a corrected header) is refused with 0x0111 (PS3.7 C.4 "Duplicate SOP Instance"); the first
copy stays."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from nodekit import DX_PRESENTATION, make_dx, which_or_fail
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from test_scp import scu, start_service

from node.ingest import STATUS_DUPLICATE_CONFLICT
from node.service import NodeService


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    service = start_service(tmp_path_factory.mktemp("dup"))
    yield service
    service.stop(timeout=10)


def _send(node: NodeService, *datasets: pydicom.Dataset, calling: str = "TESTSCU",
          syntax: str = ExplicitVRLittleEndian) -> list[int]:
    assoc = scu(node, (DX_PRESENTATION, [syntax]), calling=calling)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _stored(node: NodeService, uid: str) -> tuple[pydicom.Dataset, object]:
    record = node.repo.find_instance(uid)
    assert record is not None
    return pydicom.dcmread(node.store.path(record.path)), record


def test_identical_resend_is_acknowledged_without_new_work(node: NodeService) -> None:
    ds = make_dx(generate_uid())
    assert _send(node, ds) == [0x0000]
    first_bytes = node.store.path(node.repo.find_instance(ds.SOPInstanceUID).path).read_bytes()
    # the same object again, in the same and in another association, from another calling AE
    assert _send(node, ds, ds) == [0x0000, 0x0000]
    assert _send(node, ds, calling="OTHERSCU") == [0x0000]
    stored, record = _stored(node, ds.SOPInstanceUID)
    assert node.store.path(record.path).read_bytes() == first_bytes  # not rewritten
    status = node.repo.status(max_studies=1000)
    counts = [s["instances"] for s in status["studies"] if s["study_instance_uid"] == ds.StudyInstanceUID]
    assert counts == [1]


def test_different_content_under_a_stored_uid_is_refused_and_the_first_copy_stays(node: NodeService) -> None:
    first = make_dx(generate_uid(), accession="FIRST", seed=1)
    assert _send(node, first) == [0x0000]
    # another patient's image carrying the same SOP Instance UID (another study, other pixels)
    other = make_dx(generate_uid(), accession="OTHER", seed=2)
    other.SOPInstanceUID = first.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    assert _send(node, other) == [STATUS_DUPLICATE_CONFLICT]
    stored, record = _stored(node, first.SOPInstanceUID)
    assert stored.StudyInstanceUID == first.StudyInstanceUID == record.study_instance_uid
    assert stored.AccessionNumber == "FIRST" and stored.PixelData == first.PixelData
    assert record.size_bytes == node.store.path(record.path).stat().st_size
    # a corrected header (another patient name) under the same UID is another object: refused too
    corrected = make_dx(first.StudyInstanceUID, first.SeriesInstanceUID, accession="FIRST", seed=1)
    corrected.SOPInstanceUID = corrected.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    corrected.PatientName = "Corrected^Name"
    assert _send(node, corrected) == [STATUS_DUPLICATE_CONFLICT]
    # the same patient, study, series and grid but other pixels (a modality reusing a UID): refused
    reused = make_dx(first.StudyInstanceUID, first.SeriesInstanceUID, accession="FIRST", seed=3)
    reused.SOPInstanceUID = reused.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    assert _send(node, reused) == [STATUS_DUPLICATE_CONFLICT]
    # the node keeps serving and the identical object is still acknowledged
    assert _send(node, first) == [0x0000]
    studies = {s["study_instance_uid"] for s in node.repo.status(max_studies=1000)["studies"]}
    assert other.StudyInstanceUID not in studies
    assert not list(node.store.root.glob("*/.*.tmp"))


def test_concurrent_different_copies_of_one_uid_never_mix(node: NodeService) -> None:
    uid = generate_uid()
    copies = []
    for seed in range(6):
        ds = make_dx(generate_uid(), accession=f"C{seed}", seed=seed)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        copies.append(ds)
    results: dict[int, int] = {}
    barrier = threading.Barrier(len(copies))

    def send(i: int) -> None:
        assoc = scu(node, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
        barrier.wait(10)
        results[i] = int(assoc.send_c_store(copies[i]).Status)
        assoc.release()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(copies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results.values()) == [0x0000] + [STATUS_DUPLICATE_CONFLICT] * (len(copies) - 1)
    winner = next(i for i, s in results.items() if s == 0)
    stored, record = _stored(node, uid)
    assert record.study_instance_uid == stored.StudyInstanceUID == copies[winner].StudyInstanceUID
    assert stored.PixelData == copies[winner].PixelData


def test_a_file_left_without_its_row_is_replaced(node: NodeService, tmp_path: Path) -> None:
    """A file whose row was never committed (the node was killed in between) was never
    acknowledged: the next copy of that UID is stored and recorded normally."""
    ds = make_dx(generate_uid(), accession="REAL")
    orphan = node.store.path(node.store.relpath(ds.SOPInstanceUID))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    make_dx(generate_uid(), accession="ORPHAN").save_as(orphan, enforce_file_format=True)
    assert _send(node, ds) == [0x0000]
    stored, record = _stored(node, ds.SOPInstanceUID)
    assert stored.AccessionNumber == "REAL" and record.study_instance_uid == ds.StudyInstanceUID


def test_the_same_object_re_encoded_is_acknowledged_and_the_first_copy_kept(
    node: NodeService, tmp_path: Path
) -> None:
    """dcmsend delivers a file as it is; the same file again from storescu converted to Implicit VR
    Little Endian on the way (a router that transcodes), and once more with other bytes in the same
    syntax (a toolkit that rewrites the data set): each is Success, nothing new is stored."""
    ds = make_dx(generate_uid(), accession="ONCE")
    path = tmp_path / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    port = str(node.config.node.port)
    sent = subprocess.run([which_or_fail("dcmsend"), "-aet", "TESTSCU", "-aec", "CXRNODE", "127.0.0.1", port,
                           str(path)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    first = node.store.path(node.repo.find_instance(ds.SOPInstanceUID).path).read_bytes()
    transcoded = subprocess.run([which_or_fail("storescu"), "-v", "-xi", "-aet", "TESTSCU", "-aec", "CXRNODE",
                                 "127.0.0.1", port, str(path)], capture_output=True, text=True, timeout=60)
    log = transcoded.stdout + transcoded.stderr
    assert "Explicit -> Little Endian Implicit" in log and "Received Store Response (Success)" in log, log
    rewritten = pydicom.dcmread(path)
    rewritten.add_new(0x00091010, "LO", "ROUTER")  # a private element a router added
    rewritten.add_new(0x00090010, "LO", "SOME ROUTER")
    assert _send(node, rewritten) == [0x0000]
    # a deflated copy is not inflated a second time to be compared: only byte-identical ones pass
    assert _send(node, rewritten, syntax=DeflatedExplicitVRLittleEndian) == [STATUS_DUPLICATE_CONFLICT]
    stored, record = _stored(node, ds.SOPInstanceUID)
    assert node.store.path(record.path).read_bytes() == first  # the first copy, untouched
    assert record.transfer_syntax_uid == ExplicitVRLittleEndian and 0x00091010 not in stored
    counts = [s["instances"] for s in node.repo.status(max_studies=1000)["studies"]
              if s["study_instance_uid"] == ds.StudyInstanceUID]
    assert counts == [1]
