"""The Starlette application and the uvicorn thread that serves it inside the node process.

The server runs on its own thread with its own event loop (uvicorn installs no signal handlers
off the main thread), so ``serve``'s SIGTERM handling stays in :mod:`node.service`, which stops
the HTTP side first: no new STOW-RS is accepted once the node is stopping, and requests in
flight finish before the group committer stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.templating import Jinja2Templates

from node import audit
from node.config import NodeConfig
from node.errors import NodeError
from node.http import dashboard, health, metrics, stow
from node.http.auth import BearerTokenBackend, unauthorized
from node.http.bundles import model_inventory
from node.ingest import GroupCommitter
from node.ingest.outcomes import ReceiveOutcomes
from node.logs import log_event
from node.repository import Repository
from node.store import InstanceStore

log = logging.getLogger("node.http")

TEMPLATES_DIR = Path(__file__).with_name("templates")


class HttpServerError(NodeError):
    """The HTTP server could not start (the message names host and port)."""


@dataclass
class HttpContext:
    """What the endpoints read and write: the node's own database, store and receive path."""

    config: NodeConfig
    repo: Repository
    store: InstanceStore
    committer: GroupCommitter | None = None  # None: STOW-RS answers 503 (no receive path here)
    models_ready: Callable[[], tuple[bool, str]] = lambda: (True, "no analysis worker in this process")
    # Shared with the C-STORE handler when this process listens, so /metrics counts both protocols.
    outcomes: ReceiveOutcomes = field(default_factory=ReceiveOutcomes)
    audit_trail: audit.AuditTrail | None = None  # None: the server opens the [audit] trail


def build_app(ctx: HttpContext) -> Starlette:
    routes = [*health.ROUTES, *metrics.ROUTES, *dashboard.ROUTES, *stow.ROUTES]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(AuthenticationMiddleware, backend=BearerTokenBackend(ctx.config.http.token),
                               on_error=unauthorized)],
    )
    app.state.ctx = ctx
    app.state.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app.state.metrics = metrics.MetricsRegistry(ctx)
    return app


class HttpServer:
    """uvicorn serving :func:`build_app` on ``[http] host:port`` from a daemon thread."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self._own_audit = ctx.audit_trail is None
        if ctx.audit_trail is None:  # PS3.15 A.5 records of STOW-RS and resend, as the listener writes
            ctx.audit_trail = audit.open_audit_trail(ctx.config)
        self.app = build_app(ctx)
        settings = ctx.config.http
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host=settings.host, port=settings.port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=10,
        ))
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; start() reports it
            pass

    def start(self, timeout: float = 15.0) -> None:
        # The first model listing imports pipelines.bundle (torch): done now, off the request path,
        # so that the first scrape or page does not wait for it.
        threading.Thread(target=model_inventory, args=(self.ctx.config.models_dir,), name="http-warm",
                         daemon=True).start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HttpServerError(
                    f"cannot serve HTTP on {self.ctx.config.http.host}:{self.ctx.config.http.port} "
                    "(port in use or not allowed?)")
            time.sleep(0.02)
        log_event(log, "http.started", host=self.ctx.config.http.host, port=self.ctx.config.http.port,
                  token="set" if self.ctx.config.http.token else "none")

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._own_audit and self.ctx.audit_trail is not None:
            self.ctx.audit_trail.close()
        log_event(log, "http.stopped")
