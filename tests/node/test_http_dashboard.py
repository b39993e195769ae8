"""The dashboard over real HTTP and in headless Chromium, on a node that analysed a study.

The worker runs the real result writers (SEG, TID 1500 SR, secondary capture) on a hand-built
pipeline result (tests/results/factories.py), so the pages read real stored objects without
loading model weights; test_http_stow.py runs the shipped models end to end. The only
destination is a closed port, so its deliveries fail (one attempt) and the failure list and the
resend button have something to show.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpkit import WriterAnalyzer, base_url, c_store, chromium, client, http_config, start_service
from nodekit import REPO, free_port, make_dx, wait_for
from PIL import Image
from pydicom.uid import generate_uid

from node.repository import status as status_queries
from node.service import NodeService

ACCESSION = "ACC-HTTP-7"
PHI = ("Test^Synthetic", "SYN001", "19700101", "Synthetic")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    closed = free_port()
    config = http_config(tmp_path_factory.mktemp("dashboard"),
                         destinations=[{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                        "port": closed}],
                         node={"study_stable_seconds": 0.5}, delivery={"max_attempts": 1})
    analyzer = WriterAnalyzer()
    service = start_service(config, workers=1, analyzer_factory=lambda: analyzer)
    yield service
    service.stop(timeout=30)


@pytest.fixture(scope="module")
def study(node: NodeService) -> str:
    uid = generate_uid()
    images = [make_dx(uid, rows=320, cols=256, accession=ACCESSION, seed=i) for i in range(2)]
    assert c_store(node.config, images) == [0, 0]

    def settled() -> bool:
        status = node.repo.status()
        return status["jobs"]["done"] == 1 and status["deliveries"]["failed"] == status["results"] > 0

    wait_for(settled, 120, what="the study analysed and its deliveries failed")
    return uid


def test_index_shows_counters_studies_failures_and_models(node: NodeService, study: str) -> None:
    with client(node.config) as http:
        page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert ACCESSION in html and f'href="/studies/{study}"' in html
    assert '<div class="n" id="n-instances">2</div>' in html
    assert "Resend to archive" in html
    assert "association to ARCHIVE@127.0.0.1" in html  # the delivery's reason
    assert "Analysis processes" in html and "stale" not in html
    assert html.count("thread)") == 1  # this node's one in-process worker, from node.worker_registry
    for task in ("projection", "lungs", "covid", "ggo_detection", "ggo_segmentation"):
        assert f'href="/models/{task}"' in html
    for value in PHI:
        assert value not in html


def test_study_page_shows_each_image_findings_and_heatmap(node: NodeService, study: str) -> None:
    with client(node.config) as http:
        page = http.get(f"/studies/{study}")
        assert page.status_code == 200
        html = page.text
        assert f'<span id="accession">{ACCESSION}</span>' in html
        assert html.count('class="heatmap"') == 2
        assert "present" in html and "P = 0.810" in html and "threshold 0.500" in html
        assert "% of the lungs" in html and "2 box(es), max certainty 0.90" in html
        assert "frontal" in html and "cxr-covid 1.2.3" in html
        for value in PHI:
            assert value not in html
        heatmaps = [part.split('"')[0] for part in html.split('src="/instances/')[1:]]
        assert len(heatmaps) == 2
        png = http.get(f"/instances/{heatmaps[0]}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.format == "PNG" and image.mode == "RGB"
    assert max(image.size) <= 512 and min(image.size) > 100
    assert len(image.getcolors(maxcolors=2**20) or []) > 50  # a picture, not a blank


def test_unknown_and_malformed_requests(node: NodeService, study: str) -> None:
    with client(node.config) as http:
        assert http.get(f"/studies/{generate_uid()}").status_code == 404
        assert http.get("/studies/not-a-uid").status_code == 400
        assert http.get(f"/instances/{generate_uid()}/heatmap.png").status_code == 404
        assert http.get("/models/no-such-task").status_code == 404
        card = http.get("/models/covid")
    assert card.status_code == 200 and "Research use only" in card.text


def test_a_source_image_is_never_served_as_a_picture(node: NodeService, study: str) -> None:
    """Only the node's own secondary captures are rendered (a received image may burn in a name)."""
    detail = status_queries.study_detail(node.repo.engine, study)
    assert detail is not None
    source = detail["sources"][0]
    with client(node.config) as http:
        assert http.get(f"/instances/{source['sop_instance_uid']}/heatmap.png").status_code == 404


@pytest.mark.slow  # the status CLI in a new process (imports the node): ~5 s
def test_status_command_and_dashboard_agree(node: NodeService, study: str) -> None:
    cli = subprocess.run([sys.executable, "-m", "node.cli.main", "status", "--json", "--config",
                          node.config.source], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    status = json.loads(cli.stdout)
    assert status["instances"] == 2 and status["jobs"]["done"] == 1
    with client(node.config) as http:
        html = http.get("/").text
    assert f'<div class="n" id="n-instances">{status["instances"]}</div>' in html
    failed = status["deliveries"]["failed"]
    assert f'<div class="n">{failed}</div><div class="l">deliveries failed</div>' in html


def test_resend_requeues_failed_deliveries(node: NodeService, study: str) -> None:
    failed = node.repo.status()["deliveries"]["failed"]
    assert failed > 0
    with client(node.config) as http:
        foreign = http.post("/resend", data={"destination": "archive"}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        response = http.post("/resend", data={"destination": "archive"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/?resent={failed}#failures"
    records = [json.loads(line) for line in node.config.audit_path.read_text().splitlines()]
    resends = [r for r in records if r["event"] == "begin-transferring" and "archive" in json.dumps(r)]
    assert len(resends) == 1  # the resend is audited, as cxr-node resend is (PS3.15 A.5.3.2)
    # The destination is still closed: one more attempt each, failed again.
    wait_for(lambda: node.repo.status()["deliveries"]["failed"] == failed, 60, what="deliveries failed again")


@pytest.mark.slow
def test_dashboard_and_study_page_in_headless_chromium(node: NodeService, study: str, tmp_path: Path) -> None:
    """The pages as a browser renders them: DOM with the accession number and the heatmap, screenshots."""
    url = base_url(node.config)
    for name, path, width in (("dashboard", "/", 1280), ("study", f"/studies/{study}", 1280),
                              ("study-phone", f"/studies/{study}", 390)):
        shot = tmp_path / f"{name}.png"
        result = chromium([f"--screenshot={shot}", f"--window-size={width},900", url + path])
        assert shot.is_file(), result.stderr[-2000:]
        image = Image.open(shot)
        assert image.size == (width, 900)
        assert len(image.convert("L").getcolors() or []) > 20  # rendered content, not a blank page
        dom = chromium(["--dump-dom", url + path]).stdout
        assert ACCESSION in dom
        if path != "/":
            assert dom.count('class="heatmap"') == 2 and "/heatmap.png" in dom
        for value in PHI:
            assert value not in dom


def test_study_page_names_an_image_that_could_not_be_analysed(node: NodeService, study: str) -> None:
    """One image of two fails in the worker: the page shows the other's findings and this one's reason."""
    uid = generate_uid()
    good, broken = (make_dx(uid, rows=320, cols=256, accession="ACC-HALF", seed=i) for i in (3, 4))
    broken.ImageComments = "analysis fails"
    assert c_store(node.config, [good, broken]) == [0, 0]

    def analysed() -> bool:
        detail = status_queries.study_detail(node.repo.engine, uid)
        return detail is not None and any(j["state"] in ("done", "failed") for j in detail["jobs"])

    wait_for(analysed, 120, what="the half-broken study analysed")
    with client(node.config) as http:
        html = http.get(f"/studies/{uid}").text
    assert html.count('class="heatmap"') == 1
    assert "Not analysed (" in html and "pixel data the pipeline cannot read" in html


def test_a_dose_report_is_stored_with_its_study_and_not_analysed(node: NodeService) -> None:
    """A DX unit's dose SR arrives with the image: the worker analyses the image alone (no "not
    analysed" report for the SR), and the page names the SR's class as stored only."""
    uid = generate_uid()
    image = make_dx(uid, rows=320, cols=256, accession="ACC-DOSE", seed=5)
    dose = make_dx(uid, accession="ACC-DOSE", seed=6)
    dose.SOPClassUID = dose.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    dose.Modality = "SR"
    del dose.PixelData
    assert c_store(node.config, [image, dose]) == [0, 0]

    def analysed() -> dict | None:
        detail = status_queries.study_detail(node.repo.engine, uid)
        done = detail is not None and detail["jobs"] and all(j["state"] == "done" for j in detail["jobs"])
        return detail if done else None

    detail = wait_for(analysed, 120, what="the study with a dose report analysed")
    assert len(detail["sources"]) == 2 and len(detail["results"]) == 3  # SEG, SR, SC of the image only
    assert not any(j["error"] for j in detail["jobs"])
    with client(node.config) as http:
        html = http.get(f"/studies/{uid}").text
    assert html.count('class="heatmap"') == 1 and "Not analysed (" not in html
    assert "X-Ray Radiation Dose SR Storage: stored with the study, not analysed" in html
