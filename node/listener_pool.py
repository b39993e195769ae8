"""``[node] listener_processes`` > 1: several processes accept associations on the node's ports.

Why: pynetdicom does each association's PDU and DIMSE work in Python threads, so in one process
every association waits for one interpreter lock. With four associations on two cores the node
was lock-bound while the machine still had CPU to give (the C-STORE handler's pure-Python steps
took 7x longer with four associations than with one). Processes do not share that lock.

How: the serve process binds the plain and TLS ports itself (a port in use stops start-up with an
error; connections that arrive before a listener process is ready wait in the kernel's queue),
then starts the listener processes with multiprocessing's "spawn" (none of the serve process's
threads, models or database connections are copied), which accept on those sockets. Each has its
own C-STORE handler and group committer; they share what separate ``cxr-node worker`` processes
share: the store and the database (SQLite in WAL mode with a busy timeout, or PostgreSQL), and
one table of open connections that keeps the association limits exact for the node as a whole
(node.association_slots; the rows of a process that dies are dropped). Refused instances are
counted in the serve process's /metrics through a pipe from each process. A listener process that
dies is started again; stopping runs in each one as in a single process: stop accepting, give
running associations their grace, commit what waits, exit.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from multiprocessing.connection import wait as wait_for_any
from typing import Any, cast

from node.association_slots import AssociationSlots
from node.config import NodeConfig
from node.errors import ListenerStartError
from node.ingest.outcomes import ReceiveOutcomes
from node.logs import log_event, setup_logging
from node.process import open_committer, open_repository, open_store
from node.scp import StoreHandler, association_slots, listening_ports, start_listener

log = logging.getLogger("node.listener_pool")

_SPAWN = multiprocessing.get_context("spawn")
START_TIMEOUT = 120.0  # a listener process imports pynetdicom, pydicom, SQLAlchemy: seconds when loaded
RESTART_DELAY = 1.0  # between a listener process's death and its replacement, doubled (up to
RESTART_DELAY_MAX = 30.0  # this) while replacements die within SHORT_LIFE seconds: no tight restart loop
SHORT_LIFE = 10.0
_BACKLOG = 128


class EventSender:
    """A listener process's end of its own pipe to the serve process ("ready", refusals).

    One pipe per process, not one queue for all: a multiprocessing queue's writers share a lock, and
    a listener process killed while it held that lock (SIGKILL, the OOM killer) left every other
    writer and the serve process's exit waiting for it forever. A pipe's writer dies alone."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._lock = threading.Lock()  # association threads send refusals concurrently

    def send(self, kind: str, first: Any, second: Any) -> None:
        with self._lock:
            try:
                self._connection.send((kind, first, second))
            except OSError:  # the serve process is gone: this process stops on its own
                pass


class ForwardedOutcomes(ReceiveOutcomes):
    """A listener process's refusals: counted here and sent to the serve process for its /metrics."""

    def __init__(self, events: EventSender) -> None:
        super().__init__()
        self._events = events

    def refused(self, protocol: str, status: int) -> None:
        super().refused(protocol, status)
        self._events.send("refused", protocol, status)


def bind_listening_sockets(config: NodeConfig) -> dict[str, socket.socket]:
    """The node's listening sockets by transport, bound and listening (node.scp.listening_ports)."""
    host = config.node.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: dict[str, socket.socket] = {}
    try:
        for transport, port in listening_ports(config):
            sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
            sock.setblocking(False)  # several processes accept on it (node.scp_transport.NodeServer)
            sockets[transport] = sock
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def run_listener_process(
    config: NodeConfig, sockets: dict[str, socket.socket], slots: AssociationSlots, connection: Any,
    grace: float, parent: int,
) -> None:
    """A listener process's life: accept on ``sockets`` until SIGTERM (from serve) or serve is gone."""
    setup_logging(config.node.log_level, config.node.log_format)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: serve decides
    repo = open_repository(config, create=False)
    committer = open_committer(config, repo)
    handler = StoreHandler(config, open_store(config), committer)
    events = EventSender(connection)
    handler.outcomes = ForwardedOutcomes(events)
    listeners = start_listener(config, handler, sockets=sockets, slots=slots)
    log_event(log, "listener.process_started", pid=os.getpid())
    events.send("ready", os.getpid(), "")
    while not stopping.wait(0.5):
        if os.getppid() != parent:  # serve died without stopping us (SIGKILL): stop in order
            log_event(log, "listener.orphaned", logging.WARNING)
            break
    listeners.close(grace)
    committer.stop(timeout=max(1.0, config.node.dimse_timeout))
    repo.engine.dispose()


class ListenerPool:
    """The serve process's side: binds the sockets; starts, watches, restarts and stops the processes."""

    process_main = staticmethod(run_listener_process)  # what each process runs (a test replaces it)

    def __init__(self, config: NodeConfig, outcomes: ReceiveOutcomes, *, grace: float = 10.0) -> None:
        self.config = config
        self.outcomes = outcomes
        self.grace = grace
        self.size = config.listener_process_count
        self.sockets: dict[str, socket.socket] = {}
        self.slots = association_slots(config)
        self._readers: set[Any] = set()  # the reading end of each listener process's pipe
        self._wake_reader, self._wake_writer = _SPAWN.Pipe(duplex=False)  # stop() ends _read_events
        self._processes: list[Any] = []
        self._lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._stopping = threading.Event()
        # (pid, died before accepting, exit code)
        self._ready: queue.SimpleQueue[tuple[int, bool, int | None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._born: dict[int, float] = {}  # when each listener process (by sentinel) was started
        self._running = threading.Event()  # every process of the start accepted

    @property
    def ports(self) -> dict[str, int]:
        return {transport: sock.getsockname()[1] for transport, sock in self.sockets.items()}

    def start(self) -> None:
        """Bind, start every listener process and wait until each accepts; raises OSError (port in
        use) or ListenerStartError (a listener process did not start), with nothing left running."""
        self.sockets = bind_listening_sockets(self.config)
        # an interpreter that exits without stop() (an uncaught error in serve) would otherwise wait
        # forever in multiprocessing's exit handler for listener processes that wait for it
        atexit.register(self.stop)
        for target, name in ((self._read_events, "listener-events"), (self._watch, "listener-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        with self._lock:
            for _ in range(self.size):
                self._processes.append(self._spawn())
        deadline = time.monotonic() + START_TIMEOUT
        started = 0
        while started < self.size:
            try:
                pid, died, exit_code = self._ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                missing = self.size - started
                raise ListenerStartError(f"{missing} of {self.size} listener processes did not start within "
                                         f"{START_TIMEOUT:.0f} s (see their log lines)") from None
            if died:  # one died before accepting: what killed it would kill its replacements
                self.stop()
                raise ListenerStartError(f"listener process {pid} exited (code {exit_code}) before accepting "
                                         "associations (see its log lines)")
            started += 1
        self._running.set()
        log_event(log, "listener.pool_started", processes=self.size, ae_title=self.config.node.ae_title,
                  host=self.config.node.host, **{f"{t}_port": p for t, p in self.ports.items()})

    def _spawn(self) -> Any:
        reader, writer = _SPAWN.Pipe(duplex=False)
        process = _SPAWN.Process(target=self.process_main, name="cxr-node-listener", daemon=False,
                                 args=(self.config, self.sockets, self.slots, writer, self.grace,
                                       os.getpid()))
        process.start()
        writer.close()  # the child holds the writing end: its death is the reader's end of file
        with self._readers_lock:
            self._readers.add(reader)
            self._wake_writer.send("readers")  # _read_events waits on the new pipe too
        self._born[process.sentinel] = time.monotonic()
        return process

    def _read_events(self) -> None:
        while True:
            with self._readers_lock:
                readers = list(self._readers)
            for ready in wait_for_any([self._wake_reader, *readers]):
                if ready is self._wake_reader:
                    if self._wake_reader.recv() is None:  # stop()
                        return
                    continue  # a new listener process's pipe: wait on the new list
                try:
                    kind, first, second = cast(Any, ready).recv()
                except (EOFError, OSError):  # that listener process has ended
                    with self._readers_lock:
                        self._readers.discard(ready)
                    cast(Any, ready).close()
                    continue
                if kind == "refused":
                    self.outcomes.refused(first, second)
                elif kind == "ready":
                    self._ready.put((first, False, None))

    def _watch(self) -> None:
        """Start a listener process again when one dies while the pool runs."""
        delay = RESTART_DELAY
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {p.sentinel: p for p in self._processes}
            for sentinel in wait_for_any(list(sentinels), timeout=0.5):
                if self._stopping.is_set():  # stop() ends them
                    return
                dead = sentinels[cast(int, sentinel)]
                dead.join(5.0)  # its sentinel may fire just before it can be reaped (exit code None)
                if not self._running.is_set():  # start() reports it and stops the others
                    self._ready.put((dead.pid, True, dead.exitcode))
                    return
                short_lived = time.monotonic() - self._born.pop(dead.sentinel, 0.0) < SHORT_LIFE
                delay = min(RESTART_DELAY_MAX, delay * 2) if short_lived else RESTART_DELAY
                dropped = self.slots.forget(dead.pid)  # its connections died with it
                log_event(log, "listener.process_exited", logging.WARNING, pid=dead.pid,
                          exit_code=dead.exitcode, restart_in_seconds=delay, connections_dropped=dropped)
                if self._stopping.wait(delay):
                    return
                with self._lock:
                    self._processes.remove(dead)
                    self._processes.append(self._spawn())

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._processes if p.is_alive()]

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM each listener process (each stops in order, node.scp.Listeners.close) and wait; a
        process still running after ``timeout`` is killed."""
        atexit.unregister(self.stop)
        if self._stopping.is_set() and not self._threads:
            return
        self._stopping.set()
        deadline = time.monotonic() + (self.grace + 20.0 if timeout is None else timeout)
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log_event(log, "listener.process_killed", logging.WARNING, pid=process.pid)
                process.kill()
                process.join(5.0)
        with self._readers_lock:
            self._wake_writer.send(None)
        for thread in self._threads:
            thread.join(5.0)
        self._threads.clear()
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        self._wake_reader.close()
        self._wake_writer.close()
        for sock in self.sockets.values():
            sock.close()
        self.slots.close()
        log_event(log, "listener.pool_stopped", processes=len(processes))
