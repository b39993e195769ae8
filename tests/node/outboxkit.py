"""An outbox holding real result objects, for the delivery side of the TLS and audit tests.

The SEG, SR and SC are the result writers' own objects for a synthetic DX (tests/results/factories),
recorded as a finished job's results with one pending delivery each, so the delivery loop can be
run without the models.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pydicom
from nodekit import REPO, free_port, node_toml
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(REPO / "tests" / "results"))
from factories import SPECS, make_result, make_source  # noqa: E402

from node.config import load_config  # noqa: E402
from node.delivery import DeliveryLoop  # noqa: E402
from node.repository import InstanceRecord, Repository  # noqa: E402
from node.results import build_result_objects  # noqa: E402
from node.service import open_repository, open_store  # noqa: E402
from node.store import InstanceStore, encode_part10  # noqa: E402


def audit_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def queue_results(
    repo: Repository, store: InstanceStore, objects: list[pydicom.Dataset], destination_name: str,
    *, source_sop_class: str, source_series: str,
) -> None:
    """Record a stand-in source of the objects' study, run its job to done with ``objects`` as its
    results: the outbox then holds one pending delivery per object for ``destination_name``."""
    study = str(objects[0].StudyInstanceUID)
    uid = generate_uid()
    repo.record_instances([InstanceRecord(
        sop_instance_uid=uid, sop_class_uid=source_sop_class, study_instance_uid=study,
        series_instance_uid=source_series, transfer_syntax_uid=str(ExplicitVRLittleEndian),
        path=f"x/{uid}", size_bytes=1, received_at=time.time() - 100)])
    [job] = repo.schedule_stable_studies(time.time(), 10)
    assert repo.claim_job("w", 60, 3) is not None
    records = []
    for ds in objects:
        data = encode_part10(ds)
        relpath, _ = store.write(str(ds.SOPInstanceUID), data)
        records.append(InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=study, series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), path=relpath, size_bytes=len(data)))
    assert repo.finish_job(job, "w", records, [destination_name])


def outbox_with_results(
    tmp_path: Path, destination: dict, delivery: dict | None = None
) -> tuple[DeliveryLoop, list[pydicom.Dataset], Path]:
    """A node data folder whose outbox holds one synthetic study's SEG, SR and SC (the result
    writers' own objects, without running the models)."""
    source = make_source(SPECS[0])
    objects = build_result_objects(source, make_result(source))
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), destinations=[destination],
                                     delivery=delivery))
    config = load_config(config_path)
    repo, store = open_repository(config), open_store(config)
    queue_results(repo, store, objects, destination["name"], source_sop_class=str(source.SOPClassUID),
                  source_series=str(source.SeriesInstanceUID))
    return DeliveryLoop(config, repo, store, threading.Event()), objects, config.audit_path
