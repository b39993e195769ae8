"""Delivery to real peers in their default configuration: transfer syntax negotiation and refusals.

The outbox holds the result objects of a real chest CR (1955 x 1841: the 1-bit SEG rows do not end
on a byte boundary) stored as the writers stored them; the delivery loop sends them to

* dcmtk ``storescp`` without options (uncompressed syntaxes only): SEG and SC arrive decompressed,
  a native 1-bit SEG and an RGB capture, with the stored pixels; ``+xa``: they arrive as stored;
* Orthanc with its default transfer syntaxes: everything arrives;
* a pynetdicom SCP that stores only SR: the SR arrives, SEG and SC fail at once (no backoff) with an
  error naming the SOP class and the destination, in ``cxr-node status --json`` and text; resend
  re-queues them;
* nobody (port closed): a transient fault, retried with backoff.

Every received file is checked with dciodvfy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from nodekit import (
    REPO,
    OnlySomeClassesSCP,
    Orthanc,
    StoreSCP,
    free_port,
    node_toml,
    wait_port,
    which_or_fail,
)
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

sys.path.insert(0, str(REPO / "tests" / "results"))
from factories import make_result  # type: ignore[import-not-found]  # noqa: E402
from outboxkit import queue_results  # noqa: E402

from node.config import load_config  # noqa: E402
from node.delivery import CStoreSender, DeliveryLoop  # noqa: E402
from node.errors import DeliveryError  # noqa: E402
from node.repository import DeliveryState, Repository  # noqa: E402
from node.results import ResultSettings, build_result_objects  # noqa: E402
from node.service import open_repository, open_store  # noqa: E402
from node.store import InstanceStore  # noqa: E402

SOURCE = "pydicomdata_RG1_J2KI_CR_chest.dcm"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass
class Outbox:
    config_path: Path
    repo: Repository
    store: InstanceStore
    objects: dict[str, pydicom.Dataset]  # SOP class -> the object as written

    def loop(self) -> DeliveryLoop:
        return DeliveryLoop(load_config(self.config_path), self.repo, self.store, threading.Event())

    def drain(self, rounds: int = 1) -> None:
        loop = self.loop()
        for _ in range(rounds):
            loop.run_once()

    def states(self) -> dict[str, int]:
        return self.repo.status()["deliveries"]

    def cli(self, *args: str) -> str:
        command = [sys.executable, "-m", "node.cli.main", *args, "--config", str(self.config_path)]
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
        return out.stdout


@pytest.fixture(scope="module")
def written(dicom_samples: Path) -> dict[str, list[pydicom.Dataset]]:
    """The result objects of one real CR, JPEG 2000 (``compress``) and native, built once."""
    source = pydicom.dcmread(dicom_samples / SOURCE)
    result = make_result(source)
    j2k = ResultSettings(seg_transfer_syntax=JPEG2000Lossless, sc_transfer_syntax=JPEG2000Lossless)
    native = ResultSettings(seg_transfer_syntax=ExplicitVRLittleEndian,
                            sc_transfer_syntax=ExplicitVRLittleEndian)
    return {"j2k": build_result_objects(source, result, settings=j2k),
            "native": build_result_objects(source, result, settings=native)}


def make_outbox(tmp_path: Path, objects: list[pydicom.Dataset], destination: dict) -> Outbox:
    """A node data folder whose outbox holds ``objects`` for one destination."""
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), destinations=[destination],
                                     delivery={"backoff_seconds": 60.0, "backoff_max_seconds": 60.0,
                                                                "max_attempts": 5}))
    config = load_config(config_path)
    repo, store = open_repository(config), open_store(config)
    queue_results(repo, store, objects, destination["name"], source_sop_class="1.2.840.10008.5.1.4.1.1.1",
                  source_series=generate_uid())
    return Outbox(config_path, repo, store, {str(ds.SOPClassUID): ds for ds in objects})


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([which_or_fail("dciodvfy"), "-new", str(path)], capture_output=True, text=True,
                         timeout=120, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.lstrip().lower().startswith("error")]


def check_received(files: list[Path], sent: dict[str, pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    """Each received file: valid (dciodvfy), the same object, the same pixels; by SOP class."""
    got: dict[str, pydicom.Dataset] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        assert not dciodvfy_errors(path), (path.name, dciodvfy_errors(path))
        original = sent[str(ds.SOPClassUID)]
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        if "PixelData" in original:
            assert np.array_equal(ds.pixel_array, original.pixel_array), ds.SOPClassUID
            assert (ds.BitsAllocated, ds.Rows, ds.Columns) == (original.BitsAllocated, original.Rows,
                                                               original.Columns)
        got[str(ds.SOPClassUID)] = ds
    return got


def test_default_storescp_gets_jpeg2000_objects_decompressed(
        tmp_path: Path, written: dict[str, list[pydicom.Dataset]]) -> None:
    which_or_fail("storescp")
    port = free_port()
    scp = StoreSCP(tmp_path / "received", port).start()  # no options: uncompressed syntaxes only
    try:
        box = make_outbox(tmp_path, written["j2k"], {"name": "archive", "ae_title": "DEST", "port": port})
        stored = {str(ds.file_meta.TransferSyntaxUID) for c, ds in box.objects.items() if c != SR}
        assert stored == {JPEG2000Lossless}
        box.drain()
        assert box.states() == {"pending": 0, "sent": 3, "failed": 0}
        got = check_received(scp.files(), box.objects)
    finally:
        scp.stop()
    assert set(got) == {SEG, SC, SR}
    seg, sc = got[SEG], got[SC]
    assert not seg.file_meta.TransferSyntaxUID.is_compressed and seg.BitsAllocated == 1
    packed = (2 * seg.Rows * seg.Columns + 7) // 8  # two frames, 1 bit per pixel, padded to even length
    assert seg.Columns % 8 and len(seg.PixelData) == packed + packed % 2
    assert not sc.file_meta.TransferSyntaxUID.is_compressed
    assert sc.PhotometricInterpretation == "RGB" and sc.PlanarConfiguration == 0


def test_storescp_accepting_all_syntaxes_gets_the_objects_as_stored(
        tmp_path: Path, written: dict[str, list[pydicom.Dataset]]) -> None:
    port = free_port()
    scp = StoreSCP(tmp_path / "received", port, accept_all=True).start()
    try:
        box = make_outbox(tmp_path, written["j2k"], {"name": "archive", "ae_title": "DEST", "port": port})
        box.drain()
        assert box.states()["sent"] == 3
        got = check_received(scp.files(), box.objects)
    finally:
        scp.stop()
    assert got[SEG].file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert got[SC].file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_preferred_transfer_syntax_compresses_what_can_be(tmp_path: Path,
                                                         written: dict[str, list[pydicom.Dataset]]) -> None:
    """transfer_syntaxes = ["RLELossless"]: the native SC goes RLE; the 1-bit SEG cannot, goes native."""
    port = free_port()
    scp = StoreSCP(tmp_path / "received", port, accept_all=True).start()
    try:
        box = make_outbox(tmp_path, written["native"], {"name": "archive", "ae_title": "DEST", "port": port,
                                                        "transfer_syntaxes": ["RLELossless"]})
        box.drain()
        assert box.states()["sent"] == 3
        got = check_received(scp.files(), box.objects)
    finally:
        scp.stop()
    assert got[SC].file_meta.TransferSyntaxUID == RLELossless
    assert got[SEG].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_unknown_preferred_transfer_syntax_is_a_clear_error(tmp_path: Path) -> None:
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), destinations=[
        {"name": "archive", "port": 104, "transfer_syntaxes": ["JPEGBaseline8Bit"]}]))
    config = load_config(config_path)
    with pytest.raises(DeliveryError, match=r"destination 'archive': transfer_syntaxes: .*JPEGBaseline8Bit"):
        DeliveryLoop(config, open_repository(config), open_store(config), threading.Event())


@pytest.mark.slow  # over ~3 s: make test runs it
def test_orthanc_defaults_store_seg_sr_and_sc(tmp_path: Path,
                                              written: dict[str, list[pydicom.Dataset]]) -> None:
    which_or_fail("Orthanc")
    orthanc = Orthanc(tmp_path / "orthanc", free_port()).start()
    try:
        box = make_outbox(tmp_path, written["j2k"],
                          {"name": "pacs", "ae_title": "ORTHANC", "port": orthanc.dicom_port})
        box.drain()
        assert box.states() == {"pending": 0, "sent": 3, "failed": 0}
        files = []
        ids = orthanc.get("/instances")
        assert isinstance(ids, list) and len(ids) == 3
        for i, orthanc_id in enumerate(ids):
            path = tmp_path / f"orthanc_{i}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{orthanc_id}/file"))
            files.append(path)
        assert set(check_received(files, box.objects)) == {SEG, SC, SR}
    finally:
        orthanc.stop()


@pytest.mark.slow  # Orthanc restricted to some SOP classes, then resend: ~9 s
def test_refused_sop_class_fails_at_once_others_arrive_and_resend_requeues(
        tmp_path: Path, written: dict[str, list[pydicom.Dataset]]) -> None:
    port = free_port()
    scp = OnlySomeClassesSCP(tmp_path / "received", port, [SR]).start()
    try:
        box = make_outbox(tmp_path, written["j2k"], {"name": "sr-only", "ae_title": "SRONLY", "port": port})
        box.drain()
        assert box.states() == {"pending": 0, "sent": 1, "failed": 2}  # one attempt, no backoff
        assert set(check_received(scp.files(), box.objects)) == {SR}
        status = json.loads(box.cli("status", "--json"))
        errors = {e["sop_instance_uid"]: e for e in status["errors"]["deliveries"]}
        for sop_class, name in ((SEG, "Segmentation Storage"), (SC, "Secondary Capture Image Storage")):
            error = errors[str(box.objects[sop_class].SOPInstanceUID)]
            assert error["state"] == DeliveryState.FAILED and error["attempts"] == 1
            assert name in error["error"] and sop_class in error["error"], error
            assert "'sr-only'" in error["error"] and "refused" in error["error"]
        text = box.cli("status")
        assert "refused Segmentation Storage" in text and "refused Secondary Capture Image Storage" in text
        assert "2 failed deliveries re-queued" in box.cli("resend")
        assert box.states() == {"pending": 2, "sent": 1, "failed": 0}
    finally:
        scp.stop()


def test_destination_down_is_transient_and_backs_off(tmp_path: Path,
                                                     written: dict[str, list[pydicom.Dataset]]) -> None:
    box = make_outbox(tmp_path, written["native"], {"name": "down", "ae_title": "DOWN", "port": free_port()})
    box.drain()
    assert box.states() == {"pending": 3, "sent": 0, "failed": 0}
    assert box.repo.due_deliveries(10) == []  # backing off (backoff_seconds 60)
    errors = box.repo.status()["errors"]["deliveries"]
    assert len(errors) == 3 and all(e["error"].startswith("association to DOWN@") and e["attempts"] == 1
                                    for e in errors)


def test_a_rejecting_destination_is_reported_with_the_rejection_reason(
        tmp_path: Path, written: dict[str, list[pydicom.Dataset]]) -> None:
    """dcmtk storescp --refuse rejects every association: each attempt reports the A-ASSOCIATE-RJ's
    result, source and reason, read from the PDU (pynetdicom itself calls about 1 in 12 of these
    rejections an abort), and the deliveries stay pending with that error."""
    port = free_port()
    refusing = subprocess.Popen([which_or_fail("storescp"), "--refuse", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30, refusing)
        box = make_outbox(tmp_path, written["native"], {"name": "refusing", "ae_title": "DEST", "port": port})
        config = load_config(box.config_path)
        sender = CStoreSender(config.destinations[0], config, box.store)
        due = box.repo.due_deliveries(10)
        assert len(due) == 3
        expected = "rejected (Rejected (Permanent), DUL service-user: No reason given)"
        for _ in range(12):
            outcome = sender.send(due)
            assert set(outcome) == {d.id for d in due}
            assert all(str(message).endswith(expected) for message in outcome.values()), outcome
        box.drain()
        assert box.states() == {"pending": 3, "sent": 0, "failed": 0}
        errors = box.repo.status()["errors"]["deliveries"]
        assert len(errors) == 3 and all(e["error"].endswith(expected) for e in errors)
    finally:
        refusing.terminate()
        refusing.wait(15)


def test_sop_class_not_supported_status_fails_at_once_out_of_resources_retries(
        tmp_path: Path, written: dict[str, list[pydicom.Dataset]]) -> None:
    """C-STORE 0x0122 (SOP Class not supported) is a refusal; 0xA700 (out of resources) is transient."""
    port = free_port()
    scp = OnlySomeClassesSCP(tmp_path / "received", port, [SEG, SC, SR], aet="PICKY",
                             statuses={SEG: 0x0122, SC: 0xA700}).start()
    try:
        box = make_outbox(tmp_path, written["native"], {"name": "picky", "ae_title": "PICKY", "port": port})
        box.drain()
        assert box.states() == {"pending": 1, "sent": 1, "failed": 1}
        errors = {e["sop_instance_uid"]: e for e in box.repo.status()["errors"]["deliveries"]}
        seg, sc = errors[str(box.objects[SEG].SOPInstanceUID)], errors[str(box.objects[SC].SOPInstanceUID)]
        assert seg["state"] == "failed" and seg["attempts"] == 1
        assert "refused Segmentation Storage" in seg["error"] and "0x0122" in seg["error"]
        assert sc["state"] == "pending" and sc["attempts"] == 1 and "0xA700" in sc["error"]
    finally:
        scp.stop()
