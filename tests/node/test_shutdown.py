"""Graceful stop: the worker finishes the image in hand and releases its job (attempt not
counted); a restarted node picks the job up again. A live worker keeps its job however long one
image takes. The analyzer here is a slow stand-in for the pipeline (the real one runs in
test_system.py): only the job bookkeeping is under test."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from nodekit import DX_PRESENTATION, free_port, make_dx, node_toml, wait_for
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from node.config import load_config
from node.service import NodeService


class SlowAnalyzer:
    """Takes ``seconds`` per image and produces no result object."""

    def __init__(self, started: threading.Event, seconds: float = 0.5) -> None:
        self.started = started
        self.seconds = seconds
        self.calls = 0

    def analyze(self, source: pydicom.Dataset, **_kwargs: object) -> list[pydicom.Dataset]:
        self.calls += 1
        self.started.set()
        time.sleep(self.seconds)
        return []


@pytest.mark.slow  # over ~3 s: make test runs it
def test_stop_releases_the_running_job_and_a_restart_resumes_it(tmp_path: Path) -> None:
    config_path = tmp_path / "node.toml"
    # Stable after 2 s: a slower pause between two of the six C-STOREs (a loaded CI machine) would
    # schedule the study early and queue a second job for the rest.
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={"study_stable_seconds": 2.0}))
    config = load_config(config_path)
    started = threading.Event()
    analyzer = SlowAnalyzer(started)
    service = NodeService(config, analyzer_factory=lambda: analyzer, workers=1, deliver=False)
    service.start()
    study = generate_uid()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", config.node.port, ae_title="CXRNODE")
    for i in range(6):
        assert assoc.send_c_store(make_dx(study, seed=i)).Status == 0
    assoc.release()
    assert started.wait(30), "the worker never started the job"
    service.stop(timeout=20)  # what SIGTERM does
    status = service.repo.status()
    assert status["jobs"] == {"queued": 1, "running": 0, "done": 0, "failed": 0}
    assert 1 <= analyzer.calls < 6  # stopped between images, not after the whole study

    restarted = NodeService(
        config, analyzer_factory=lambda: SlowAnalyzer(threading.Event()), workers=1, deliver=False
    )
    restarted.start()
    try:
        wait_for(lambda: restarted.repo.status()["jobs"]["done"] == 1, 30, what="job resumed and done")
        [job] = [s for s in restarted.repo.status()["studies"] if s["study_instance_uid"] == study]
        assert job["jobs"] == {"done": 1}
    finally:
        restarted.stop(timeout=20)


@pytest.mark.slow  # over ~3 s: make test runs it
def test_an_image_slower_than_the_lease_does_not_hand_the_job_to_another_worker(tmp_path: Path) -> None:
    # The lease (0.6 s) is a fraction of one image's analysis (3 s): only a heartbeat that renews
    # it while the image is analysed keeps the second, idle worker from claiming the same job.
    config_path = tmp_path / "node.toml"
    config_path.write_text(
        node_toml(
            tmp_path / "var",
            free_port(),
            node={"study_stable_seconds": 0.3},
            worker={"lease_seconds": 0.6, "poll_seconds": 0.05},
        )
    )
    config = load_config(config_path)
    analyzer = SlowAnalyzer(threading.Event(), seconds=3.0)
    service = NodeService(config, analyzer_factory=lambda: analyzer, workers=2, deliver=False)
    service.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", config.node.port, ae_title="CXRNODE")
        assert assoc.send_c_store(make_dx(generate_uid(), seed=0)).Status == 0
        assoc.release()
        wait_for(lambda: service.repo.status()["jobs"]["done"] == 1, 30, what="the job done")
        assert analyzer.calls == 1, "the image was analysed twice: the lease expired under a live worker"
        [study] = service.repo.status()["studies"]
        assert study["jobs"] == {"done": 1}
    finally:
        service.stop(timeout=20)


# an A-ABORT before the A-ASSOCIATE-RQ is an invalid event: pynetdicom's reactor thread raised on it
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("processes", [1, 2])
def test_a_connection_without_an_association_does_not_hold_the_stop(tmp_path: Path, processes: int) -> None:
    """A TCP probe that never sends an A-ASSOCIATE-RQ is aborted at once; an established association
    still gets the grace (a third of the stop timeout, at most 10 s) to finish. With the listener in
    this process and with listener processes."""
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={"listener_processes": processes}))
    config = load_config(config_path)

    def acceptors(service: NodeService) -> list:
        assert service.server is not None
        return [a for a in service.server.ae.active_associations if a.is_acceptor]

    def accepted(service: NodeService) -> bool:
        if service.pool is not None:
            return service.pool.slots.open_connections() == 1
        return bool(acceptors(service))

    service = NodeService(config, workers=0, deliver=False, schedule=False)
    service.start()
    assert (service.pool is not None) == (processes > 1)
    with socket.create_connection(("127.0.0.1", config.node.port)):  # connected, never speaks DICOM
        wait_for(lambda: accepted(service), 10, what="the probe's acceptor")
        began = time.monotonic()
        service.stop(timeout=30)  # grace 10 s
        assert time.monotonic() - began < 5

    service = NodeService(config, workers=0, deliver=False, schedule=False)
    service.start()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", config.node.port, ae_title="CXRNODE")
    assert assoc.is_established
    in_process = acceptors(service) if service.pool is None else []
    began = time.monotonic()
    service.stop(timeout=3)  # grace 1 s, then the idle association is aborted
    assert time.monotonic() - began >= 0.9
    assert all(acceptor.is_aborted for acceptor in in_process)
    wait_for(lambda: not assoc.is_alive(), 10, what="the peer seeing the abort")
    assert assoc.is_aborted


def test_a_connection_accepted_as_the_stop_begins_gets_no_association(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection accepted a moment before the stop, whose association its thread creates only
    after the stop has swept the unestablished ones, is closed unanswered: started, it would wait
    out the ACSE timeout (30 s), and its DUL thread, not a daemon, would keep a listener process
    from exiting that long."""
    from node import scp_transport

    create = scp_transport.NodeRequestHandler._create_association
    creating = threading.Event()

    def late(self: scp_transport.NodeRequestHandler) -> object:
        creating.set()
        time.sleep(1.0)  # the stop's sweep runs meanwhile
        return create(self)

    monkeypatch.setattr(scp_transport.NodeRequestHandler, "_create_association", late)
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={"listener_processes": 1}))
    config = load_config(config_path)
    service = NodeService(config, workers=0, deliver=False, schedule=False)
    service.start()
    assert service.server is not None
    ae = service.server.ae
    with socket.create_connection(("127.0.0.1", config.node.port)) as probe:
        assert creating.wait(10)
        service.stop(timeout=30)
        probe.settimeout(5)
        assert probe.recv(100) == b""  # closed unanswered, at once
    wait_for(lambda: not [a for a in ae.active_associations if a.is_acceptor], 3,
             what="no association left running")
