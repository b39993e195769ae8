"""``[node] listener_processes`` > 1 (node.listener_pool): several processes accept on one port.

Real senders (dcmtk storescu in its default configuration, four at once, and a pynetdicom SCU):
every acknowledged instance is on disk and in the database, refusals reach the serve process's
tally, a listener process that dies is replaced, and none outlives the node, whether it is stopped
with SIGTERM or killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nodekit import (
    DX_PRESENTATION,
    PG_URL,
    REPO,
    NodeProcess,
    free_port,
    make_dx,
    node_toml,
    wait_for,
    which_or_fail,
    write_study,
)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from tlskit import make_pki

from node.config import AUTO_LISTENER_PROCESSES, load_config, usable_cpus
from node.errors import ConfigError, ListenerStartError
from node.ingest.outcomes import ReceiveOutcomes
from node.listener_pool import ListenerPool
from node.process import open_repository
from node.service import NodeService


def _storescu(port: int, files: list[Path]) -> subprocess.Popen:
    return subprocess.Popen([which_or_fail("storescu"), "-aet", "STORESCU", "-aec", "CXRNODE",
                             "127.0.0.1", str(port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _listener_processes(pid: int) -> set[int]:
    """Live listener processes whose parent is ``pid`` (from /proc, Linux)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pooled(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201 - a generator fixture
    """A node with two listener processes, on SQLite and (suite with PostgreSQL) on its own schema there."""
    settings: dict = {"listener_processes": 2}
    if request.param == "postgresql":
        settings |= {"database_url": PG_URL, "database_schema": request.getfixturevalue("pg_schema")}
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node=settings))
    service = NodeService(load_config(config_path), workers=0, deliver=False, schedule=False)
    service.start()
    yield service
    service.stop(timeout=30)


def test_four_dcmtk_senders_at_once_every_acknowledged_instance_is_stored(pooled: NodeService,
                                                                          tmp_path: Path) -> None:
    assert pooled.pool is not None and len(pooled.pool.pids()) == 2
    studies = [write_study(tmp_path / f"study{i}", 6) for i in range(4)]
    senders = [_storescu(pooled.config.node.port, files) for files in studies]
    for sender in senders:
        _, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
    for files in studies:
        for path in files:
            record = pooled.repo.find_instance(path.stem)
            assert record is not None, f"{path.name} acknowledged but not recorded"
            assert pooled.store.path(record.path).read_bytes()[128:132] == b"DICM"
    assert pooled.repo.instance_count() == 24

    bad = make_dx(generate_uid())
    del bad.PixelData  # refused with 0xA900 in a listener process
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pooled.config.node.port, ae_title="CXRNODE")
    assert assoc.is_established
    assert assoc.send_c_store(bad).Status == 0xA900
    assoc.release()
    wait_for(lambda: pooled.pool.outcomes.snapshot().get(("dimse", "0xA900")) == 1, 10,
             what="the refusal counted in the serve process")


def test_a_listener_process_that_dies_is_replaced(pooled: NodeService, tmp_path: Path) -> None:
    assert pooled.pool is not None
    first = set(pooled.pool.pids())
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(pooled.pool.pids()) == 2 and victim not in pooled.pool.pids(), 60,
             what="a replacement listener process")
    files = write_study(tmp_path / "after", 4)
    sender = _storescu(pooled.config.node.port, files)
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert all(pooled.repo.find_instance(p.stem) is not None for p in files)


@pytest.mark.slow  # two node processes started and stopped: over ~3 s
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_listener_process_outlives_the_node(tmp_path: Path, how: str) -> None:
    port = free_port()
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", port, node={"listener_processes": 3,
                                                                  "max_associations_per_host": 6}))
    node = NodeProcess(config_path, port, tmp_path / "node.log").start("--workers", "0")
    assert node.proc is not None
    wait_for(lambda: "listener.pool_started" in node.log(), 60, what="the listener processes")
    listeners = _listener_processes(node.proc.pid)
    assert len(listeners) == 3
    files = write_study(tmp_path / "study", 3)
    sender = _storescu(port, files)
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    if how == "SIGTERM":
        assert node.terminate(timeout=60) == 0, node.log()
        assert not any(_alive(pid) for pid in listeners)
        assert "listener.process_exited" not in node.log()  # a stop is not a death to report
    else:
        node.kill(children=False)  # serve alone: its listener processes notice and stop on their own
        wait_for(lambda: not any(_alive(pid) for pid in listeners), 30, what="the listener processes to stop")
        assert "listener.orphaned" in node.log()


def test_listener_processes_zero_means_one_per_cpu_and_bad_counts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    for value in (-1, 65):
        path.write_text(node_toml(tmp_path / "var", 11112, node={"listener_processes": value}))
        with pytest.raises(ConfigError, match=r"0 \(one per CPU\) or 1\.\.64"):
            load_config(path)
    path.write_text(node_toml(tmp_path / "var", 11112, node={}))
    assert load_config(path).node.listener_processes == 0  # the default
    cpus = len(os.sched_getaffinity(0))
    assert usable_cpus() == cpus
    assert load_config(path).listener_process_count == min(cpus, AUTO_LISTENER_PROCESSES)
    path.write_text(node_toml(tmp_path / "var", 11112, node={"listener_processes": 9, "max_associations": 6,
                                                             "max_associations_per_host": 2}))
    assert load_config(path).listener_process_count == 6  # no more processes than connections


def _associate(port: int, source: str) -> Any:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title="CXRNODE", bind_address=(source, 0))


def _hold(port: int, count: int, held: list[Any], within: float, what: str) -> None:
    """Associate from 127.0.0.1 until ``count`` are established (kept in ``held``): a slot freed a
    moment ago may still refuse the first tries."""
    def enough() -> bool:
        assoc = _associate(port, "127.0.0.1")
        if assoc.is_established:
            held.append(assoc)
        return len(held) == count

    wait_for(enough, within, what=what)


def test_association_limits_hold_for_the_node_across_listener_processes(tmp_path: Path) -> None:
    """Two listener processes, at most 4 connections and 3 per host: the kernel may give any
    connection to either process, and the limits still count every one of them exactly."""
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={
        "listener_processes": 2, "max_associations": 4, "max_associations_per_host": 3}))
    service = NodeService(load_config(config_path), workers=0, deliver=False, schedule=False)
    service.start()
    port = service.config.node.port
    held: list[Any] = []
    try:
        assert service.pool is not None and len(service.pool.pids()) == 2
        for _ in range(3):
            held.append(_associate(port, "127.0.0.1"))
            assert held[-1].is_established
        over_host = _associate(port, "127.0.0.1")
        # refused whichever process took it. pynetdicom 3.0's requestor reports a rejection that
        # comes back within its thread switch as an abort (it does so against dcmtk's storescp
        # --refuse too), so the exact answer is read with dcmtk
        assert not over_host.is_established
        echo = subprocess.run([which_or_fail("echoscu"), "-aec", "CXRNODE", "127.0.0.1", str(port)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode != 0
        assert "Association Rejected" in echo.stderr and "Local Limit Exceeded" in echo.stderr, echo.stderr
        held.append(_associate(port, "127.0.0.2"))
        assert held[-1].is_established
        over_node = _associate(port, "127.0.0.3")
        assert not over_node.is_established
        assert service.pool.slots.open_connections() == 4
        held.pop(0).release()
        wait_for(lambda: service.pool.slots.open_connections() == 3, 10, what="the released slot")
        again = _associate(port, "127.0.0.3")
        assert again.is_established
        assert again.send_c_store(make_dx(generate_uid())).Status == 0x0000
        held.append(again)
    finally:
        for assoc in held:
            assoc.release()
        service.stop(timeout=30)


@pytest.mark.parametrize("processes", [1, 2])
def test_tcp_probes_release_their_connection_slots_at_once(tmp_path: Path, processes: int) -> None:
    """A peer that connects and closes without an A-ASSOCIATE-RQ (a load balancer's health check,
    a port scan) frees its slot when it closes: five probes, then two senders from the same host
    with two allowed per host, well inside the 30 s ACSE timeout that held each slot before."""
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={
        "listener_processes": processes, "max_associations_per_host": 2}))
    service = NodeService(load_config(config_path), workers=0, deliver=False, schedule=False)
    service.start()
    port = service.config.node.port
    held: list[Any] = []
    try:
        for _ in range(5):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()

        started = time.monotonic()
        _hold(port, 2, held, 20, "two associations after the probes")
        assert time.monotonic() - started < 5
    finally:
        for assoc in held:
            assoc.release()
        service.stop(timeout=30)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_port_in_use_stops_serve_with_a_message(tmp_path: Path, processes: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_path = tmp_path / "node.toml"
        config_path.write_text(node_toml(tmp_path / "var", port, node={"listener_processes": processes}))
        out = subprocess.run([sys.executable, "-m", "node.cli.main", "serve", "--config", str(config_path),
                              "--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert not _listener_processes(os.getpid())


@pytest.mark.slow  # a PKI and a node process: over ~3 s
def test_listener_processes_serve_the_tls_port_too(tmp_path: Path) -> None:
    """Each listener process builds its own TLS context and accepts on the TLS socket serve bound;
    a TLS connection over a limit reads the rejection after its handshake (node.refusals)."""
    which_or_fail("openssl")
    pki = make_pki(tmp_path / "pki")
    plain, tls = free_port(), free_port()
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", plain, node={
        "listener_processes": 2, "tls_port": tls, "tls_certificate": str(pki.node.cert),
        "tls_private_key": str(pki.node.key), "tls_ca_certificates": str(pki.ca.cert),
        "max_associations_per_host": 2}))
    node = NodeProcess(config_path, plain, tmp_path / "node.log").start("--workers", "0")
    try:
        wait_for(lambda: "listener.pool_started" in node.log(), 60, what="the listener processes")
        tls_files, plain_files = write_study(tmp_path / "tls", 2), write_study(tmp_path / "plain", 2)
        tls_args = ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca.cert)]
        for args, port, files in ((tls_args, tls, tls_files), ([], plain, plain_files)):
            out = subprocess.run([which_or_fail("storescu"), *args, "-aec", "CXRNODE", "127.0.0.1", str(port),
                                  *map(str, files)], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        repo = open_repository(load_config(config_path))
        assert all(repo.find_instance(p.stem) is not None for p in tls_files + plain_files)
        repo.engine.dispose()
        rogue = subprocess.run([which_or_fail("echoscu"), "-aec", "CXRNODE", "127.0.0.1", str(tls)],
                               capture_output=True, text=True, timeout=60)
        assert rogue.returncode != 0  # plain DICOM on the TLS port: no association
        held: list[Any] = []

        _hold(plain, 2, held, 30, "two associations held from 127.0.0.1")  # the last sender's slot frees late
        over = subprocess.run([which_or_fail("echoscu"), *tls_args, "-aec", "CXRNODE", "127.0.0.1", str(tls)],
                              capture_output=True, text=True, timeout=60)
        for assoc in held:
            assoc.release()
        assert "Association Rejected" in over.stderr and "Local Limit Exceeded" in over.stderr, over.stderr
    finally:
        assert node.terminate(timeout=60) == 0, node.log()


def _exit_at_once(config, sockets, slots, events, grace, parent) -> None:  # noqa: ANN001 - ListenerPool.process_main
    raise SystemExit(3)


class _BrokenPool(ListenerPool):
    process_main = staticmethod(_exit_at_once)


def test_a_listener_process_that_dies_before_accepting_fails_the_start_at_once(tmp_path: Path) -> None:
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={"listener_processes": 2}))
    pool = _BrokenPool(load_config(config_path), ReceiveOutcomes())
    started = time.monotonic()
    with pytest.raises(ListenerStartError, match=r"exited \(code 3\) before accepting"):
        pool.start()
    assert time.monotonic() - started < 60  # not the 120 s start timeout
    assert not pool.pids()
    with socket.socket() as again:  # the port is free again
        again.bind(("127.0.0.1", pool.config.node.port))


_EXIT_WITHOUT_STOP = """
import sys
from node.config import load_config
from node.ingest.outcomes import ReceiveOutcomes
from node.listener_pool import ListenerPool
pool = ListenerPool(load_config(sys.argv[1]), ReceiveOutcomes(), grace=1.0)
pool.start()
print(*pool.pids(), flush=True)
raise RuntimeError("serve's main thread fails without stopping the pool")
"""


def test_a_process_that_exits_without_stopping_its_pool_still_ends(tmp_path: Path) -> None:
    """multiprocessing's exit handler waits for the listener processes, which wait for their parent:
    the pool stops itself at exit instead of hanging there."""
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), node={"listener_processes": 2}))
    out = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_STOP, str(config_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "without stopping the pool" in out.stderr
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids)
