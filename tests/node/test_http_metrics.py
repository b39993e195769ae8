"""``GET /metrics`` over real HTTP: Prometheus text read back with prometheus_client's own parser.

Instances go in by C-STORE (two stored, one refused), a job and a delivery are carried through
the real repository calls the worker and the delivery loop make, and every family is checked
for the numbers the database holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from httpkit import c_store, client, http_config, start_service
from nodekit import REPO, make_dx
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from node.http.bundles import model_inventory
from node.repository import InstanceRecord
from node.service import NodeService


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    config = http_config(tmp_path_factory.mktemp("metrics"),
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 9}])
    service = start_service(config, workers=0, deliver=False, schedule=False)
    yield service
    service.stop(timeout=20)


def scrape(node: NodeService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with client(node.config) as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("cxr_node_"), family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_metrics_follow_instances_jobs_and_deliveries(node: NodeService) -> None:
    study = generate_uid()
    good = [make_dx(study, seed=i) for i in range(2)]
    bad = make_dx(study, seed=9)
    del bad.PixelData  # refused with 0xA900 (data set does not match SOP class)
    assert c_store(node.config, [*good, bad]) == [0, 0, 0xA900]

    repo = node.repo
    [job_id] = repo.schedule_stable_studies(time.time(), 0.0)
    job = repo.claim_job("test:w0", 60.0, 3)
    assert job is not None and job.id == job_id
    time.sleep(0.2)  # a job that takes some time
    result = InstanceRecord(sop_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                            study_instance_uid=study, series_instance_uid=generate_uid(),
                            transfer_syntax_uid="1.2.840.10008.1.2.1", path="xx/result.dcm", size_bytes=10)
    assert repo.finish_job(job.id, "test:w0", [result], ["pacs"])
    [due] = repo.due_deliveries(10)
    repo.mark_sent([due.id])

    samples = scrape(node)
    received = "cxr_node_instances_received_total"
    assert value(samples, received, protocol="dimse", outcome="stored", status="0x0000") == 2
    assert value(samples, received, protocol="dimse", outcome="refused", status="0xA900") == 1
    assert value(samples, received, protocol="dicomweb", outcome="stored", status="0x0000") == 0
    assert value(samples, "cxr_node_results_stored_total") == 1
    assert value(samples, "cxr_node_jobs", state="done") == 1
    assert value(samples, "cxr_node_jobs", state="queued") == 0
    assert value(samples, "cxr_node_deliveries", destination="pacs", state="sent") == 1
    assert value(samples, "cxr_node_deliveries", destination="pacs", state="failed") == 0
    assert value(samples, "cxr_node_database_up") == 1

    assert value(samples, "cxr_node_job_duration_seconds_count") == 1
    assert 0.2 <= value(samples, "cxr_node_job_duration_seconds_sum") < 60
    assert value(samples, "cxr_node_job_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "cxr_node_receive_to_delivered_seconds_count") == 1
    latency = value(samples, "cxr_node_receive_to_delivered_seconds_sum")
    assert 0.2 <= latency < 60
    assert value(samples, "cxr_node_receive_to_delivered_seconds_bucket", le="60.0") == 1
    assert value(samples, "cxr_node_receive_to_delivered_seconds_bucket", le="+Inf") == 1

    assert value(samples, "cxr_node_disk_free_bytes") > 0
    assert value(samples, "cxr_node_disk_min_free_bytes") == 16 * 2**20


def test_model_versions_are_labels(node: NodeService) -> None:
    entries, problem = model_inventory(REPO / "models")
    assert problem == "" and len(entries) == 5
    samples = scrape(node)
    for entry in entries:
        labels = {"task": entry.task, "name": entry.name, "version": entry.version}
        assert value(samples, "cxr_node_model_info", **labels) == 1
    assert value(samples, "cxr_node_stow_request_seconds_count") == 0  # this process's own histogram
