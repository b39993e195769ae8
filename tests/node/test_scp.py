"""The DICOM listener against real peers (dcmtk echoscu/storescu, pynetdicom SCU): negotiation,
durable store, idempotent resend, and every bad-input case with its failure status."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from nodekit import (
    DX_PRESENTATION,
    free_port,
    make_dx,
    moved_into_study,
    node_toml,
    wait_for,
    which_or_fail,
    write_study,
)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from node import audit
from node.config import load_config
from node.service import NodeService

_config.STORE_SEND_CHUNKED_DATASET = True  # send paths as raw bytes (bad-input cases)

DX_FILES = (
    "orthanctests_Monochrome1-Jpeg_CR.dcm",
    "pydicomdata_RG1_J2KI_CR_chest.dcm",
    "nhsx_nih_cxr_dx_sc.dcm",
)


def start_service(tmp: Path, **node: object) -> NodeService:
    """A node whose listener runs in this process (``listener_processes = 1``), so that tests can
    read its log records and patch its constants; the default, listener processes, is tested in
    test_listener_pool and by every test that starts ``cxr-node serve``."""
    node.setdefault("listener_processes", 1)
    port = free_port()
    config_path = tmp / "node.toml"
    config_path.write_text(node_toml(tmp / "var", port, node=node))
    service = NodeService(load_config(config_path), workers=0, deliver=False, schedule=False)
    service.start()
    return service


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    service = start_service(
        tmp_path_factory.mktemp("scp"),
        allowed_calling_aets=["STORESCU", "ECHOSCU", "TESTSCU"],
        max_pixels=5_100_000,
    )
    yield service
    service.stop(timeout=10)


def scu(
    node: NodeService, *contexts: tuple[str, list[str]], calling: str = "TESTSCU", called: str = "CXRNODE"
):
    ae = AE(ae_title=calling)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", node.config.node.port, ae_title=called)


def stored_uids(node: NodeService) -> set[str]:
    return {s["study_instance_uid"] for s in node.repo.status(max_studies=1000)["studies"]}


def test_echoscu(node: NodeService) -> None:
    echoscu = which_or_fail("echoscu")
    out = subprocess.run(
        [echoscu, "-aet", "ECHOSCU", "-aec", "CXRNODE", "127.0.0.1", str(node.config.node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "flags", [["-xy"], ["-xw"], ["-xs"]], ids=["jpeg-baseline", "jpeg2000", "uncompressed"]
)
def test_storescu_real_compressed_chest_images(
    node: NodeService, dicom_samples: Path, flags: list[str]
) -> None:
    """storescu -R sends real chest files as they are encoded; each is stored byte-for-byte durable."""
    storescu = which_or_fail("storescu")
    files = (
        [dicom_samples / DX_FILES[0]]
        if flags == ["-xy"]
        else [dicom_samples / DX_FILES[1]]
        if flags == ["-xw"]
        else [dicom_samples / DX_FILES[2]]
    )
    out = subprocess.run(
        [
            storescu,
            "-aet",
            "STORESCU",
            "-aec",
            "CXRNODE",
            "-R",
            *flags,
            "127.0.0.1",
            str(node.config.node.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for f in files:
        source = pydicom.dcmread(f)
        record = node.repo.find_instance(source.SOPInstanceUID)
        assert record is not None, f"{f.name} not recorded"
        if source.file_meta.TransferSyntaxUID.is_compressed:  # dcmtk may only switch native encodings
            assert record.transfer_syntax_uid == source.file_meta.TransferSyntaxUID  # stored as sent
        stored = pydicom.dcmread(node.store.path(record.path))
        assert stored.PixelData == source.PixelData
        assert stored.pixel_array.shape == source.pixel_array.shape  # decodable with the installed plugins


def test_resend_is_idempotent(node: NodeService, tmp_path: Path) -> None:
    ds = make_dx(generate_uid())
    assoc = scu(node, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
    assert assoc.is_established
    first = assoc.send_c_store(ds)
    second = assoc.send_c_store(ds)
    assoc.release()
    assert first.Status == 0x0000 and second.Status == 0x0000
    status = node.repo.status(max_studies=1000)
    study = [s for s in status["studies"] if s["study_instance_uid"] == ds.StudyInstanceUID]
    assert study and study[0]["instances"] == 1


def test_implicit_little_endian_and_many_in_one_association(node: NodeService, tmp_path: Path) -> None:
    paths = write_study(tmp_path, 5)
    assoc = scu(node, (DX_PRESENTATION, [ImplicitVRLittleEndian]))
    assert assoc.is_established
    assert assoc.accepted_contexts[0].transfer_syntax[0] == ImplicitVRLittleEndian
    statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in paths]
    assoc.release()
    assert statuses == [0] * 5
    for p in paths:
        uid = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        record = node.repo.find_instance(uid)
        assert record is not None and node.store.path(record.path).is_file()
        assert (
            pydicom.dcmread(node.store.path(record.path)).file_meta.TransferSyntaxUID
            == ImplicitVRLittleEndian
        )


def test_wrong_called_ae_is_rejected(node: NodeService) -> None:
    assoc = scu(node, (Verification, [ExplicitVRLittleEndian]), called="SOMEONEELSE")
    assert assoc.is_rejected
    # PS3.8 9.3.4: rejected-permanent (1), service-user (1), called-AE-title-not-recognized (7)
    rsp = assoc.acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == (0x01, 0x01, 0x07)


def test_calling_ae_outside_allowlist_is_rejected(node: NodeService) -> None:
    assoc = scu(node, (Verification, [ExplicitVRLittleEndian]), calling="INTRUDER")
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == (
        0x01,
        0x01,
        0x03,
    )  # calling-AE-title-not-recognized


def test_an_abstract_syntax_that_is_no_storage_class_is_rejected(node: NodeService) -> None:
    worklist = "1.2.840.10008.5.1.4.31"  # Modality Worklist FIND: not a service of this node
    assoc = scu(node, (worklist, [ExplicitVRLittleEndian]), (Verification, [ExplicitVRLittleEndian]),
                (CTImageStorage, [ExplicitVRLittleEndian]))
    assert assoc.is_established
    rejected = [c.abstract_syntax for c in assoc.rejected_contexts]
    accepted = [c.abstract_syntax for c in assoc.accepted_contexts]
    assoc.release()
    assert rejected == [worklist] and accepted == [Verification, CTImageStorage]


def _in_study(path: Path, study: pydicom.Dataset, out: Path) -> Path:
    moved_into_study(path, study).save_as(out, enforce_file_format=True)
    return out


def test_dcmsend_of_a_study_folder_with_non_image_objects_stores_every_object(
    node: NodeService, tmp_path: Path, dicom_samples: Path
) -> None:
    """dcmsend in its default configuration halts at the first instance it cannot send: a study
    folder holding an SR and another system's SEG beside its radiographs must be taken whole."""
    dcmsend = which_or_fail("dcmsend")
    folder = tmp_path / "study"
    folder.mkdir()
    images = write_study(folder, 2)
    study = pydicom.dcmread(images[0], stop_before_pixels=True)
    others = [
        _in_study(dicom_samples / "highdicom_sr_document.dcm", study, folder / "a-sr.dcm"),
        _in_study(dicom_samples / "highdicom_seg_image_cr_binary.dcm", study, folder / "b-seg.dcm"),
    ]
    out = subprocess.run(
        [dcmsend, "-aet", "TESTSCU", "-aec", "CXRNODE", "127.0.0.1", str(node.config.node.port),
         *map(str, sorted(folder.iterdir()))],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for path in [*images, *others]:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        record = node.repo.find_instance(sent.SOPInstanceUID)
        assert record is not None and not record.derived, path.name
        assert record.sop_class_uid == sent.SOPClassUID
        assert pydicom.dcmread(node.store.path(record.path), stop_before_pixels=True).SOPInstanceUID == \
            sent.SOPInstanceUID
    studies = node.repo.status(max_studies=1000)["studies"]
    assert [s["instances"] for s in studies if s["study_instance_uid"] == study.StudyInstanceUID] == [4]


def test_stored_only_objects_skip_the_image_checks_but_not_the_framing(
    node: NodeService, tmp_path: Path
) -> None:
    """A multi-frame CT over max_pixels and an SR without Pixel Data are stored (they are never
    decoded); a stored-only object whose Pixel Data is cut short is still refused 0xC000."""
    ct = make_dx(generate_uid(), rows=512, cols=512)
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ct.Modality = "CT"
    ct.NumberOfFrames = 24  # 512 x 512 x 24 = 6.3 million values, over this node's 5.1 million
    ct.PixelData = bytes(512 * 512 * 2 * 24)
    sr = make_dx(generate_uid())
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray dose SR
    sr.Modality = "SR"
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation"):
        if keyword in sr:
            delattr(sr, keyword)
    cut = make_dx(generate_uid())
    cut.SOPClassUID = cut.file_meta.MediaStorageSOPClassUID = CTImageStorage
    cut_path = tmp_path / "cut.dcm"
    data = _part10(cut, cut_path)
    cut_path.write_bytes(data[: len(data) - 5000])

    assoc = scu(node, (CTImageStorage, [ExplicitVRLittleEndian]), ("1.2.840.10008.5.1.4.1.1.88.67",
                                                                  [ExplicitVRLittleEndian]))
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in (ct, sr)]
    statuses.append(int(assoc.send_c_store(cut_path).Status))
    assoc.release()
    assert statuses == [0x0000, 0x0000, 0xC000]
    assert node.repo.find_instance(ct.SOPInstanceUID) is not None
    assert node.repo.find_instance(sr.SOPInstanceUID) is not None
    assert node.repo.find_instance(cut.SOPInstanceUID) is None


def _send_raw(node: NodeService, path: Path) -> int:
    assoc = scu(node, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
    assert assoc.is_established
    status = assoc.send_c_store(path)  # a path is sent as its bytes, without decoding
    assoc.release()
    return int(status.Status)


def _part10(ds: pydicom.Dataset, path: Path) -> bytes:
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_bad_inputs_get_failure_statuses_and_the_node_keeps_serving(
    node: NodeService, tmp_path: Path, dicom_samples: Path
) -> None:
    good = make_dx(generate_uid())
    cases: dict[str, tuple[Path, int]] = {}

    # 1. bytes that are not DICOM behind a valid file meta: 0xC000 cannot understand
    meta_only = tmp_path / "garbage.dcm"
    data = _part10(make_dx(generate_uid()), meta_only)
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    meta_only.write_bytes(data[:meta_end] + b"\x13\x37NOT-DICOM" * 100)
    cases["garbage"] = (meta_only, 0xC000)

    # 2. a dataset without pixel data: 0xA900 does not match SOP class
    no_pixels = make_dx(generate_uid())
    del no_pixels.PixelData
    cases["no-pixels"] = (tmp_path / "nopixels.dcm", 0xA900)
    _part10(no_pixels, cases["no-pixels"][0])

    # 3. a truncated file (Pixel Data cut in the middle): 0xC000
    truncated = tmp_path / "truncated.dcm"
    data = _part10(make_dx(generate_uid()), truncated)
    truncated.write_bytes(data[: len(data) - 5000])
    cases["truncated"] = (truncated, 0xC000)

    # 4. an image over max_pixels (5.1e6 in this node): 0xA700 out of resources
    big = make_dx(generate_uid(), rows=2300, cols=2300)
    cases["too-large"] = (tmp_path / "big.dcm", 0xA700)
    _part10(big, cases["too-large"][0])

    # 5. a SOP class that differs from the presentation context: 0xA900
    wrong_class = make_dx(generate_uid())
    wrong_class.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # data set says SC, the request says DX
    cases["wrong-class"] = (tmp_path / "wrongclass.dcm", 0xA900)
    wrong_class.preamble = b"\x00" * 128
    wrong_class.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
    wrong_class.save_as(cases["wrong-class"][0], enforce_file_format=False)

    # 6. a real file whose Pixel Data has an odd length (PS3.5 7.1.1 wants even) but holds all
    #    Rows x Columns pixels: tolerated like dcmtk does (stored, it decodes), not refused
    cases["odd-length-pixels"] = (dicom_samples / "highdicom_dx_image_chest.dcm", 0x0000)

    got = {name: _send_raw(node, path) for name, (path, _expected) in cases.items()}
    assert got == {name: expected for name, (_p, expected) in cases.items()}

    # 7. random bytes on the TCP port (not even an A-ASSOCIATE-RQ): connection dropped
    with socket.create_connection(("127.0.0.1", node.config.node.port), timeout=10) as sock:
        sock.sendall(b"\x47\x45\x54 / HTTP/1.0\r\n\r\n" * 10)
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass

    # nothing of the above was recorded; the node still serves the next association
    for name, (path, _expected) in cases.items():
        if name in ("garbage", "truncated", "odd-length-pixels"):
            continue
        uid = pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID
        assert node.repo.find_instance(uid) is None, name
    assoc = scu(node, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
    assert assoc.send_c_store(good).Status == 0x0000
    assoc.release()
    assert node.repo.find_instance(good.SOPInstanceUID) is not None
    assert not list(node.store.root.glob("*/.*.tmp"))  # nothing half-written


def test_free_disk_watermark_refuses_with_a700(tmp_path: Path) -> None:
    service = start_service(tmp_path, min_free_disk_mb=1_000_000_000)  # ~1 PB: always below
    try:
        ds = make_dx(generate_uid())
        assoc = scu(service, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0xA700
        assert assoc.send_c_store(ds).Status == 0xA700  # and keeps answering
        assoc.release()
        assert service.repo.instance_count() == 0
    finally:
        service.stop(timeout=10)


def test_database_failure_gives_c001_and_nothing_is_acknowledged(tmp_path: Path) -> None:
    service = start_service(tmp_path)
    try:
        service.repo.engine.dispose()
        db_file = Path(str(service.repo.engine.url.database))
        with service.repo.engine.begin() as conn:  # make every insert fail: drop the table
            conn.exec_driver_sql("DROP TABLE deliveries")
            conn.exec_driver_sql("DROP TABLE instances")
        ds = make_dx(generate_uid())
        assoc = scu(service, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
        assert assoc.send_c_store(ds).Status == 0xC001
        assoc.release()
        assert db_file.exists()
        service.repo.create_schema()  # the database is back: the same instance is accepted
        assoc = scu(service, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert service.repo.find_instance(ds.SOPInstanceUID) is not None
    finally:
        service.stop(timeout=10)


def test_deflated_explicit_little_endian_is_accepted_and_stored_as_sent(node: NodeService) -> None:
    ds = make_dx(generate_uid())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assoc = scu(node, (DX_PRESENTATION, [DeflatedExplicitVRLittleEndian]))
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    record = node.repo.find_instance(ds.SOPInstanceUID)
    assert record is not None and record.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    stored = pydicom.dcmread(node.store.path(record.path))
    assert stored.PixelData == ds.PixelData and stored.StudyInstanceUID == ds.StudyInstanceUID


def _received_records(node: NodeService, uids: set[str]) -> list[dict]:
    """The node's instances-transferred records (action C/U/refused) naming any of ``uids``."""
    records = [json.loads(line) for line in node.config.audit_path.read_text().splitlines()]

    def named(record: dict) -> set[str]:
        return {u for o in record["participant_objects"]
                for c in o["sop_classes"] for u in c["instance_uids"]}

    return [r for r in records if r["event"] == "instances-transferred" and r["event_action_code"] != "R"
            and uids & named(r)]


def test_received_instances_are_audited_per_association_and_study(
    node: NodeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dcmtk storescu sends study A (3), study B (2), A again (1) in one association: one record per
    run of a study; a resent instance is a U record; a refused one has its own record with its
    status; a long run is recorded in parts of RECEIVED_PER_RECORD."""
    a, b = generate_uid(), generate_uid()
    first = write_study(tmp_path / "a", 3, study_uid=a)
    second = write_study(tmp_path / "b", 2, study_uid=b)
    third = write_study(tmp_path / "a2", 1, study_uid=a)
    files = [*first, *second, *third]
    uid = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    storescu = which_or_fail("storescu")
    out = subprocess.run([storescu, "-aet", "STORESCU", "-aec", "CXRNODE", "127.0.0.1",
                          str(node.config.node.port), *map(str, files)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # written when the association ends, which the node may do just after its A-RELEASE-RP
    records = wait_for(lambda: len(_received_records(node, set(uid.values()))) == 3
                       and _received_records(node, set(uid.values())), 10, what="three audit records")
    runs = [(r["participant_objects"][0]["participant_object_id"],
             sorted(r["participant_objects"][0]["sop_classes"][0]["instance_uids"])) for r in records]
    assert runs == [(a, sorted(uid[p] for p in first)), (b, sorted(uid[p] for p in second)),
                    (a, [uid[third[0]]])]
    outcomes = {(r["event_action_code"], r["event_outcome_indicator"], r["transport"]) for r in records}
    assert outcomes == {("C", 0, "tcp")}
    assert {r["active_participants"][0]["user_id"] for r in records} == {"STORESCU"}

    # the same instance again (U), then one refused (no pixel data: 0xA900), then a long run
    monkeypatch.setattr(audit, "RECEIVED_PER_RECORD", 2)
    no_pixels = make_dx(generate_uid())
    del no_pixels.PixelData
    refused_path = tmp_path / "nopixels.dcm"
    _part10(no_pixels, refused_path)
    run = write_study(tmp_path / "run", 5)
    run_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in run}
    assoc = scu(node, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
    statuses = [assoc.send_c_store(p).Status for p in [first[0], refused_path, *run]]
    assoc.release()
    assert statuses == [0, 0xA900, 0, 0, 0, 0, 0]
    wait_for(lambda: len(_received_records(node, run_uids)) == 3, 10, what="the long run's records")
    (again,) = _received_records(node, {uid[first[0]]})[-1:]
    assert again["event_action_code"] == "U" and again["event_outcome_indicator"] == 0
    (refused,) = _received_records(node, {str(no_pixels.SOPInstanceUID)})
    assert refused["event_outcome_indicator"] == 4 and refused["detail"]["status"] == "0xA900"
    assert refused["event_outcome_description"]
    parts = [len(r["participant_objects"][0]["sop_classes"][0]["instance_uids"])
             for r in _received_records(node, run_uids)]
    assert parts == [2, 2, 1]

    # an association the peer aborts still gets its stored instances recorded
    aborted = write_study(tmp_path / "aborted", 1)
    aborted_uids = {str(pydicom.dcmread(aborted[0], stop_before_pixels=True).SOPInstanceUID)}
    assoc = scu(node, (DX_PRESENTATION, [ExplicitVRLittleEndian]))
    assert assoc.send_c_store(aborted[0]).Status == 0
    assoc.abort()
    wait_for(lambda: _received_records(node, aborted_uids), 10, what="the aborted association's record")


def test_storescu_large_instance_is_stored_as_sent(node: NodeService, tmp_path: Path) -> None:
    """An 8 MiB instance from dcmtk storescu (flushed while it arrives, durability "fsync") is
    acknowledged, recorded, and stored with the sender's bytes."""
    ds = make_dx(generate_uid(), rows=2048, cols=2048)
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    storescu = which_or_fail("storescu")
    out = subprocess.run([storescu, "-aet", "STORESCU", "-aec", "CXRNODE", "127.0.0.1",
                          str(node.config.node.port), str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    record = node.repo.find_instance(ds.SOPInstanceUID)
    assert record is not None
    assert pydicom.dcmread(node.store.path(record.path)).PixelData == ds.PixelData
