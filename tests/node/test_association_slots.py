"""The node-wide open-connection table (node.association_slots) on its own: limits, release, the
rows of a process that died, and a lock whose holder was killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from node.association_slots import AssociationSlots, Refusal

_SPAWN = multiprocessing.get_context("spawn")


def _admit_and_wait(slots: AssociationSlots, hosts: list[str], ready: object) -> None:
    for host in hosts:
        assert slots.admit(host) is None
    ready.set()  # type: ignore[attr-defined]
    time.sleep(600)  # until killed


def _hold_the_lock(slots: AssociationSlots, ready: object) -> None:
    with slots._locked():
        ready.set()  # type: ignore[attr-defined]
        time.sleep(600)  # killed while holding it


def test_limits_per_host_and_for_the_node(tmp_path: Path) -> None:
    slots = AssociationSlots(3, 2, tmp_path / "slots.lock")
    assert slots.admit("10.0.0.1") is None
    assert slots.admit("10.0.0.1") is None
    assert slots.admit("10.0.0.1") == Refusal("max_associations_per_host", 2, 2)
    assert slots.admit("::1") is None
    assert slots.admit("10.0.0.2") == Refusal("max_associations", 3, 3)
    slots.release("10.0.0.1")
    assert slots.open_connections() == 2
    assert slots.admit("10.0.0.2") is None
    slots.release("10.0.0.9")  # never admitted: nothing changes
    assert slots.open_connections() == 3
    slots.close()


def test_another_process_counts_and_its_rows_go_when_it_dies(tmp_path: Path) -> None:
    slots = AssociationSlots(5, 3, tmp_path / "slots.lock")
    ready = _SPAWN.Event()
    child = _SPAWN.Process(target=_admit_and_wait, args=(slots, ["10.0.0.1", "10.0.0.1", "10.0.0.2"], ready))
    child.start()
    try:
        assert ready.wait(60)
        assert slots.admit("10.0.0.1") is None  # the host's third, counted across processes
        assert slots.admit("10.0.0.1") == Refusal("max_associations_per_host", 3, 3)
        assert slots.admit("10.0.0.3") is None
        assert slots.admit("10.0.0.4") == Refusal("max_associations", 5, 5)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    assert slots.forget(child.pid) == 3
    assert slots.open_connections() == 2
    assert slots.admit("10.0.0.4") is None


def test_a_process_killed_while_holding_the_lock_does_not_stop_the_others(tmp_path: Path) -> None:
    slots = AssociationSlots(2, 2, tmp_path / "slots.lock")
    ready = _SPAWN.Event()
    child = _SPAWN.Process(target=_hold_the_lock, args=(slots, ready))
    child.start()
    assert ready.wait(60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    started = time.monotonic()
    assert slots.admit("10.0.0.1") is None
    assert time.monotonic() - started < 5
