"""``/healthz`` (the process answers) and ``/readyz`` (it can do its work) for orchestrators.

Readiness means: the database answers a query, the store's disk is above ``min_free_disk_mb``
(below it every C-STORE and STOW-RS is refused) and, when this process runs analysis workers,
their models are loaded. A node whose workers run in other processes (``cxr-node worker``)
reports that instead of guessing.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from node.errors import DatabaseError, DiskFullError
from node.worker import Worker
from node.worker_registry import list_processes


def workers_ready(workers: Sequence[tuple[Worker, threading.Thread]]) -> tuple[bool, str]:
    """(ready, detail) of this process's analysis workers: ready once one has loaded the models."""
    if not workers:
        return True, "no analysis worker in this process"
    loaded = [w for w, _ in workers if w.analyzer is not None]
    if loaded:
        return True, f"{len(loaded)} of {len(workers)} worker(s) loaded the models"
    errors = sorted({w.load_error for w, _ in workers if w.load_error})
    return False, "models not loaded yet" + (f": {errors[0]}" if errors else "")


def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def readiness(ctx: Any) -> dict[str, Any]:
    """Each check with its verdict and a one-line detail (no patient data: paths and counts)."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        ctx.repo.ping()
        checks["database"] = {"ok": True, "detail": ctx.repo.engine.dialect.name}
    except DatabaseError as exc:
        checks["database"] = {"ok": False, "detail": str(exc)}
    free = shutil.disk_usage(ctx.store.root).free
    try:
        ctx.store.check_free_space(0)
        checks["disk"] = {"ok": True, "detail": f"{free // 2**20} MiB free", "free_bytes": free}
    except DiskFullError as exc:
        checks["disk"] = {"ok": False, "detail": str(exc), "free_bytes": free}
    ok, detail = ctx.models_ready()
    if ok and checks["database"]["ok"]:
        try:
            live = [p for p in list_processes(ctx.repo.engine) if not p["stale"]]
            detail += f"; {len(live)} live analysis process(es) with their models (cxr-node status)"
        except DatabaseError:
            pass
    checks["models"] = {"ok": ok, "detail": detail}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


def readyz(request: Request) -> JSONResponse:
    report = readiness(request.app.state.ctx)
    return JSONResponse(report, status_code=200 if report["ready"] else 503)


ROUTES = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
