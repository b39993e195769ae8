"""STOW-RS receive over real HTTP: dicomweb-client and hand-made multipart/related bodies.

Each stored part is on disk and in the database when the response arrives (no waiting), with
the same checks, limits and duplicate policy as a C-STORE; the PS3.18 response lists stored and
failed instances with their failure reasons, as DICOM JSON or XML.
"""

from __future__ import annotations

import io
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from httpkit import base_url, client, http_config, start_service
from nodekit import make_dx
from pydicom.uid import generate_uid

from node.service import NodeService
from node.store import data_set_offset

TOKEN = "stow-token"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_BYTES = 4_000_000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    config = http_config(tmp_path_factory.mktemp("stow"), token=TOKEN, node={"max_instance_bytes": MAX_BYTES})
    service = start_service(config, workers=0, deliver=False, schedule=False, listen=False)
    yield service
    service.stop(timeout=20)


def part10(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def body(parts: list[bytes], boundary: str = "b0undary", part_type: str = "application/dicom") -> bytes:
    chunks = [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def post(node: NodeService, parts: list[bytes], *, path: str = "/dicomweb/studies", accept: str | None = None,
         content_type: str = 'multipart/related; type="application/dicom"; boundary=b0undary',
         raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    with client(node.config, TOKEN) as http:
        return http.post(path, content=raw if raw is not None else body(parts), headers=headers)


def failures(response: httpx.Response) -> dict[str, int]:
    ds = pydicom.Dataset.from_json(response.json())
    items = ds.get("FailedSOPSequence", [])
    return {str(i.get("ReferencedSOPInstanceUID", "")): int(i.FailureReason) for i in items}


def stored(response: httpx.Response) -> list[str]:
    ds = pydicom.Dataset.from_json(response.json())
    return [str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence", [])]


def test_dicomweb_client_stores_instances_durably_before_the_answer(node: NodeService) -> None:
    study = generate_uid()
    images = [make_dx(study, seed=i, accession="STOW1") for i in range(2)]
    web = DICOMwebClient(f"{base_url(node.config)}/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})
    answer = web.store_instances(images, study_instance_uid=study)
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
        str(ds.SOPInstanceUID) for ds in images]
    assert "FailedSOPSequence" not in answer
    for ds in images:  # at once: committed before the response
        record = node.repo.find_instance(str(ds.SOPInstanceUID))
        assert record is not None and not record.derived
        assert record.calling_aet == "STOW-RS" and record.accession_number == "STOW1"
        stored_file = node.store.path(record.path)
        data = stored_file.read_bytes()
        sent = part10(ds)
        assert data[data_set_offset(stored_file):] == sent[data_set_offset_bytes(sent):]
        assert pydicom.dcmread(stored_file).SOPInstanceUID == ds.SOPInstanceUID
    assert not list(node.store.incoming.iterdir())  # nothing left behind


def data_set_offset_bytes(data: bytes) -> int:
    return 144 + int.from_bytes(data[140:144], "little")


def test_a_real_chest_cr_is_stored(node: NodeService, dicom_samples: Path) -> None:
    sample = dicom_samples / "orthanctests_Monochrome1-Jpeg_CR.dcm"
    ds = pydicom.dcmread(sample)
    response = post(node, [sample.read_bytes()], path=f"/dicomweb/studies/{ds.StudyInstanceUID}")
    assert response.status_code == 200, response.text
    assert stored(response) == [str(ds.SOPInstanceUID)]
    assert node.repo.find_instance(str(ds.SOPInstanceUID)) is not None


def test_partial_success_is_202_with_each_failure_and_its_reason(node: NodeService) -> None:
    study = generate_uid()
    good = make_dx(study, seed=1)
    no_pixels = make_dx(study, seed=2)
    del no_pixels.PixelData
    seg = make_dx(study, seed=3)  # another system's SEG in the study: stored, never analysed
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = SEG
    unknown = make_dx(study, seed=5)
    not_storage = "1.2.826.0.1.3680043.8.498.1"  # a UID that names no Storage SOP Class
    unknown.SOPClassUID = unknown.file_meta.MediaStorageSOPClassUID = not_storage
    big = make_dx(study, rows=1500, cols=1500, seed=4)  # 4.5 MB of pixels > max_instance_bytes
    response = post(node, [part10(good), part10(no_pixels), part10(seg), part10(unknown), part10(big),
                           b"not dicom at all"])
    assert response.status_code == 202, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert stored(response) == [str(good.SOPInstanceUID), str(seg.SOPInstanceUID)]
    assert failures(response) == {
        str(no_pixels.SOPInstanceUID): 0xA900,  # data set does not match SOP class (no Pixel Data)
        str(unknown.SOPInstanceUID): 0x0122,  # SOP class not supported
        str(big.SOPInstanceUID): 0xA700,  # out of resources: over max_instance_bytes
        "": 0xC000,  # cannot understand
    }
    warning = response.headers["warning"]
    assert "299 cxr-node" in warning and "no Pixel Data" in warning and "max_instance_bytes" in warning
    for ds in (no_pixels, unknown, big):
        assert node.repo.find_instance(str(ds.SOPInstanceUID)) is None
    assert node.repo.find_instance(str(seg.SOPInstanceUID)) is not None
    assert not list(node.store.incoming.iterdir())


def test_nothing_stored_is_409(node: NodeService) -> None:
    bad = make_dx(generate_uid())
    del bad.PixelData
    response = post(node, [part10(bad)])
    assert response.status_code == 409
    assert failures(response) == {str(bad.SOPInstanceUID): 0xA900}


def test_the_study_in_the_path_must_match(node: NodeService) -> None:
    ds = make_dx(generate_uid())
    other = post(node, [part10(ds)], path=f"/dicomweb/studies/{generate_uid()}")
    assert other.status_code == 409 and failures(other) == {str(ds.SOPInstanceUID): 0xA900}
    same = post(node, [part10(ds)], path=f"/dicomweb/studies/{ds.StudyInstanceUID}")
    assert same.status_code == 200 and stored(same) == [str(ds.SOPInstanceUID)]
    assert post(node, [part10(ds)], path="/dicomweb/studies/not-a-uid").status_code == 400


def test_duplicates_follow_the_receive_path_policy(node: NodeService) -> None:
    ds = make_dx(generate_uid(), seed=5)
    assert post(node, [part10(ds)]).status_code == 200
    again = post(node, [part10(ds)])  # identical: acknowledged again, nothing new
    assert again.status_code == 200 and stored(again) == [str(ds.SOPInstanceUID)]
    changed = make_dx(str(ds.StudyInstanceUID), seed=6)
    changed.SOPInstanceUID = changed.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    conflict = post(node, [part10(changed)])
    assert conflict.status_code == 409 and failures(conflict) == {str(ds.SOPInstanceUID): 0x0111}


def test_xml_response_on_request(node: NodeService) -> None:
    good, bad = make_dx(generate_uid(), seed=7), make_dx(generate_uid(), seed=8)
    del bad.PixelData
    response = post(node, [part10(good), part10(bad)], accept="application/dicom+xml")
    assert response.status_code == 202
    assert response.headers["content-type"].startswith("application/dicom+xml")
    root = ET.fromstring(response.content)
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    assert root.tag == "{http://dicom.nema.org/PS3.19/models/NativeDICOM}NativeDicomModel"
    failed = root.find("d:DicomAttribute[@keyword='FailedSOPSequence']", ns)
    assert failed is not None
    reason = failed.find("d:Item/d:DicomAttribute[@tag='00081197']/d:Value", ns)
    assert reason is not None and reason.text == str(0xA900)
    uid = root.find("d:DicomAttribute[@keyword='ReferencedSOPSequence']/d:Item/"
                    "d:DicomAttribute[@tag='00081155']/d:Value", ns)
    assert uid is not None and uid.text == str(good.SOPInstanceUID)
    assert post(node, [part10(make_dx(generate_uid()))], accept="text/html").status_code == 406


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    "application/json",
    'multipart/related; type="application/dicom+json"; boundary=b0undary',
    "multipart/form-data; boundary=b0undary",
])
def test_other_media_types_are_415(node: NodeService, content_type: str) -> None:
    assert post(node, [part10(make_dx(generate_uid()))], content_type=content_type).status_code == 415


def test_malformed_bodies_are_400(node: NodeService) -> None:
    ds = part10(make_dx(generate_uid()))
    no_boundary = post(node, [ds], content_type='multipart/related; type="application/dicom"')
    assert no_boundary.status_code == 400
    truncated = body([ds])[: len(ds) // 2]
    assert post(node, [], raw=truncated).status_code == 400
    assert post(node, [], raw=b"--b0undary--\r\n").status_code == 400
    assert not list(node.store.incoming.iterdir())


def test_a_large_request_streams_in_bounded_memory(node: NodeService) -> None:
    """A 40 MB part (over the limit) is refused without being held: the server's memory stays flat."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    boundary = uuid.uuid4().hex

    def stream() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        chunk = b"\x00" * (1 << 20)
        for _ in range(40):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with client(node.config, TOKEN) as http:
        media = f'multipart/related; type="application/dicom"; boundary={boundary}'
        response = http.post("/dicomweb/studies", content=stream(), headers={"Content-Type": media})
    assert response.status_code == 409
    assert list(failures(response).values()) == [0xA700]
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 30 * 1024, f"peak memory grew by {grown_kib} KiB for a 40 MB body"


def test_stored_and_refused_instances_are_audited_without_phi(node: NodeService) -> None:
    """PS3.15 A.5.3.4 records, as the listener writes for a C-STORE: the request's stored instances
    of one study in one record, a refused one in its own with its status; UIDs only."""
    study = generate_uid()
    good = [make_dx(study, seed=11), make_dx(study, seed=13)]
    bad = make_dx(generate_uid(), seed=12)
    del bad.PixelData
    assert post(node, [part10(good[0]), part10(bad), part10(good[1])]).status_code == 202
    text = node.config.audit_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    uids = (*(str(g.SOPInstanceUID) for g in good), str(bad.SOPInstanceUID))
    mine = [r for r in records if any(uid in json.dumps(r) for uid in uids)]
    assert len(mine) == 2
    assert all("STOW-RS" in json.dumps(r) for r in mine)
    stored = [r for r in mine if r["event_outcome_indicator"] == 0]
    (objects,) = [r["participant_objects"] for r in stored]
    assert objects[0]["participant_object_id"] == study
    assert sorted(objects[0]["sop_classes"][0]["instance_uids"]) == sorted(uids[:2])
    for value in ("Test^Synthetic", "SYN001", "19700101"):
        assert value not in text
