"""STOW-RS delivery: ``type = "dicomweb"`` destinations, through the node's outbox.

- Orthanc in its default configuration with the DICOMweb plugin and HTTP basic auth: the SEG, SR
  and secondary captures land in the source study (checked by QIDO-RS); a wrong password fails
  the deliveries with the HTTP status as the reason.
- Another cxr-node as a bearer-token destination: it refuses SEG and SR (0x0122, SOP class not
  supported), which fails those deliveries at once, while the secondary captures are stored.
- One end-to-end test with the shipped models (slow): a real chest CR sent by STOW-RS is
  analysed and its results delivered by STOW-RS to Orthanc.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from httpkit import (
    OrthancDicomWeb,
    WriterAnalyzer,
    base_url,
    c_store,
    chromium,
    client,
    http_config,
    start_service,
)
from nodekit import REPO, make_dx, wait_for
from pydicom.uid import generate_uid

from node.config import parse_config
from node.errors import ConfigError
from node.http import stow
from node.repository import status as status_queries
from node.service import NodeService

SEG, SR3D, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancDicomWeb]:
    server = OrthancDicomWeb(tmp_path_factory.mktemp("orthanc-dicomweb")).start()
    yield server
    server.stop()


def dicomweb_destination(orthanc: OrthancDicomWeb, password: str | None = None, name: str = "pacs") -> dict:
    return {"name": name, "type": "dicomweb", "url": f"{orthanc.url}/dicom-web",
            "username": orthanc.user, "password": password or orthanc.password}


def settled(node: NodeService, results: int) -> bool:
    status = node.repo.status()
    d = status["deliveries"]
    return status["results"] == results and d["pending"] == 0 and d["sent"] + d["failed"] == results


def test_results_land_in_the_source_study_on_orthanc(tmp_path: Path, orthanc: OrthancDicomWeb) -> None:
    study = generate_uid()
    images = [make_dx(study, rows=256, cols=224, accession="WEB1", seed=i) for i in range(2)]
    with orthanc.http() as http:  # the PACS already holds the source study
        for ds in images:
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert http.post("/instances", content=path.read_bytes()).status_code == 200
    config = http_config(tmp_path / "node", destinations=[dicomweb_destination(orthanc)],
                         node={"study_stable_seconds": 0.5})
    node = start_service(config, workers=1, analyzer_factory=WriterAnalyzer)
    try:
        assert c_store(config, images) == [0, 0]
        wait_for(lambda: settled(node, 6), 120, what="6 result objects delivered")
        status = node.repo.status()
        assert status["deliveries"] == {"pending": 0, "sent": 6, "failed": 0}, status["errors"]
    finally:
        node.stop(timeout=30)
    instances = orthanc.study_instances(study)
    classes = sorted(i["00080016"]["Value"][0] for i in instances)
    assert classes == sorted([images[0].SOPClassUID] * 2 + [SEG] * 2 + [SR3D] * 2 + [SC] * 2)


@pytest.mark.slow  # two delivery attempts of three objects: 3.7 s alone, 4-5 s in make check
def test_a_wrong_password_fails_with_the_http_status(tmp_path: Path, orthanc: OrthancDicomWeb) -> None:
    config = http_config(tmp_path, destinations=[dicomweb_destination(orthanc, password="wrong")],
                         node={"study_stable_seconds": 0.5}, delivery={"max_attempts": 2})
    node = start_service(config, workers=1, analyzer_factory=WriterAnalyzer)
    try:
        assert c_store(config, [make_dx(generate_uid(), rows=256, cols=224)]) == [0]
        wait_for(lambda: node.repo.status()["deliveries"]["failed"] == 3, 120, what="3 deliveries failed")
        failed = status_queries.failures(node.repo.engine)["deliveries"]
    finally:
        node.stop(timeout=30)
    assert len(failed) == 3
    for row in failed:
        assert row["attempts"] == 2  # retried with backoff before failing
        assert row["error"] == f"STOW-RS to destination 'pacs' ({orthanc.url}/dicom-web): HTTP 401"


def test_bearer_token_destination_and_a_refused_sop_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A delivers to node B's STOW-RS with B's bearer token; B, restricted here to secondary
    captures (a node takes every Storage SOP Class), refuses the SEG and the SR with 0x0122."""
    monkeypatch.setattr(stow, "is_stored", lambda sop_class: sop_class == SC)
    receiver_config = http_config(tmp_path / "b", token="node-b-token")
    receiver = start_service(receiver_config, workers=0, deliver=False, schedule=False, listen=False)
    destination = {"name": "node-b", "type": "dicomweb", "url": f"{base_url(receiver_config)}/dicomweb",
                   "token": "node-b-token"}
    config = http_config(tmp_path / "a", destinations=[destination], node={"study_stable_seconds": 0.5})
    node = start_service(config, workers=1, analyzer_factory=WriterAnalyzer)
    try:
        image = make_dx(generate_uid(), rows=256, cols=224)
        assert c_store(config, [image]) == [0]
        wait_for(lambda: settled(node, 3), 120, what="3 deliveries settled")
        detail = status_queries.study_detail(node.repo.engine, str(image.StudyInstanceUID))
        assert detail is not None
        by_class = {r["sop_instance_uid"]: r["sop_class_uid"] for r in detail["results"]}
        for d in detail["deliveries"]:
            if by_class[d["sop_instance_uid"]] == SC:
                assert d["state"] == "sent"
                assert receiver.repo.find_instance(d["sop_instance_uid"]) is not None
            else:  # refused at once: one attempt although max_attempts is 30
                assert d["state"] == "failed" and d["attempts"] == 1
                assert "failure reason 0x0122" in d["error"]
    finally:
        node.stop(timeout=30)
        receiver.stop(timeout=30)


def test_dicomweb_destination_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs url"):
        parse_config({"destinations": [{"name": "web", "type": "dicomweb"}]})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"destinations": [{"name": "web", "type": "dicomweb", "url": "http://x/dicom-web",
                                        "username": "u", "password": "p", "token": "t"}]})


@pytest.mark.slow
def test_stow_rs_in_analysed_with_the_shipped_models_and_delivered_by_stow_rs(
    tmp_path: Path, orthanc: OrthancDicomWeb, dicom_samples: Path
) -> None:
    """End to end: a real chest CR by STOW-RS -> the shipped models -> SEG, SR, SC by STOW-RS to Orthanc."""
    sample = dicom_samples / "orthanctests_Monochrome1-Jpeg_CR.dcm"
    source = pydicom.dcmread(sample, stop_before_pixels=True)
    study = str(source.StudyInstanceUID)
    config = http_config(tmp_path / "node", models_dir=REPO / "models",
                         destinations=[dicomweb_destination(orthanc)], node={"study_stable_seconds": 0.5})
    node = start_service(config, workers=1)
    try:
        boundary = "e2e-boundary"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + sample.read_bytes()
                + f"\r\n--{boundary}--\r\n".encode())
        with client(config) as http:
            answer = http.post(f"/dicomweb/studies/{study}", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert answer.status_code == 200, answer.text
        wait_for(lambda: settled(node, 3), 540, interval=1.0, what="the CR analysed and 3 results delivered")
        assert node.repo.status()["deliveries"]["sent"] == 3
        with client(config) as http:
            page = http.get(f"/studies/{study}").text
        assert "COVID-19" in page and 'class="heatmap"' in page and "Lung area" in page
        assert "not detected" in page or "% of the lungs" in page  # the GGO decision, either way
        shots = tmp_path / "screenshots"
        shots.mkdir()
        chromium([f"--screenshot={shots / 'study-real-cr.png'}", "--window-size=1280,900",
                  f"{base_url(config)}/studies/{study}"])
        assert (shots / "study-real-cr.png").is_file()
        shutil.copy(shots / "study-real-cr.png", tmp_path / "study-real-cr.png")
    finally:
        node.stop(timeout=60)
    classes = sorted(i["00080016"]["Value"][0] for i in orthanc.study_instances(study))
    assert classes == sorted([SEG, SR3D, SC])
