"""The dashboard: server-rendered pages (Jinja2 templates, no JavaScript) over the status queries.

- ``/``: counters, the recent studies, failed jobs and deliveries (resend button), the models;
- ``/studies/{uid}``: per image the findings its SR states and the heatmap thumbnail;
- ``/instances/{uid}/heatmap.png``: a stored secondary capture as a PNG (Pillow);
- ``/models/{task}``: a model's card;
- ``POST /resend``: failed deliveries back to pending (what ``cxr-node resend`` does).

Pages show accession numbers and UIDs only: the queries carry no patient attribute and the
findings are read from coded SR content (node.http.findings).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydicom.uid import UID
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from node import audit
from node.errors import parse_image_failures
from node.http.bundles import model_inventory
from node.http.findings import (
    SECONDARY_CAPTURE,
    SR_CLASSES,
    FindingsError,
    ImageFindings,
    heatmap_source_uid,
    read_findings,
    thumbnail_png,
)
from node.logs import log_event
from node.repository import status as status_queries
from node.sop_classes import is_analysed
from node.store import valid_uid
from node.worker_registry import list_processes

log = logging.getLogger("node.http.dashboard")

STATE_CLASS = {"done": "ok", "delivering": "busy", "analysing": "busy", "receiving": "busy",
               "failed": "bad", "delivery_failed": "bad"}


def when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    token_set = bool(request.app.state.ctx.config.http.token)
    context = {"when": when, "state_class": STATE_CLASS, "token_set": token_set, **context}
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


def index(request: Request) -> Response:
    ctx = request.app.state.ctx
    status = status_queries.overview(ctx.repo.engine, max_studies=100, max_errors=20)
    failed = status_queries.failures(ctx.repo.engine, limit=50)
    models, models_problem = model_inventory(ctx.config.models_dir)
    destinations = sorted({d["destination"] for d in failed["deliveries"]})
    processes = list_processes(ctx.repo.engine)  # what each analysis process loaded (node.worker_registry)
    return _render(request, "index.html", {
        "status": status, "failed": failed, "models": models, "models_problem": models_problem,
        "destinations": destinations, "processes": processes, "resent": request.query_params.get("resent")})


def _findings(ctx: Any, results: list[dict[str, Any]]) -> tuple[dict[str, ImageFindings], list[str]]:
    """Findings per source image from the study's SRs, each with its heatmap's UID."""
    heatmaps: dict[str, str] = {}
    problems: list[str] = []
    for row in results:
        if row["sop_class_uid"] == SECONDARY_CAPTURE:
            try:
                heatmaps[heatmap_source_uid(ctx.store.path(row["path"]))] = row["sop_instance_uid"]
            except FindingsError as exc:
                problems.append(str(exc))
    found: dict[str, ImageFindings] = {}
    for row in results:
        if row["sop_class_uid"] in SR_CLASSES:
            try:
                findings = read_findings(ctx.store.path(row["path"]))
            except FindingsError as exc:
                problems.append(str(exc))
                continue
            findings.heatmap_uid = heatmaps.get(findings.source_uid)
            found[findings.source_uid] = findings
    return found, problems


def study(request: Request) -> Response:
    ctx = request.app.state.ctx
    uid = request.path_params["uid"]
    if not valid_uid(uid):
        raise HTTPException(400, f"not a UID: {uid[:80]!r}")
    detail = status_queries.study_detail(ctx.repo.engine, uid)
    if detail is None:
        raise HTTPException(404, f"no study {uid} on this node")
    findings, problems = _findings(ctx, detail["results"])
    # Images a job could not analyse, with the stage and reason the worker recorded (node.errors).
    not_analysed = {f["sop_instance_uid"]: f for job in detail["jobs"]
                    for f in parse_image_failures(job["error"])}
    # Objects kept with the study but never analysed (node.sop_classes): named by their SOP class.
    stored_only = {src["sop_instance_uid"]: UID(src["sop_class_uid"]).name for src in detail["sources"]
                   if not is_analysed(src["sop_class_uid"])}
    return _render(request, "study.html", {"study": detail, "findings": findings, "problems": problems,
                                           "not_analysed": not_analysed, "stored_only": stored_only})


def heatmap(request: Request) -> Response:
    ctx = request.app.state.ctx
    uid = request.path_params["uid"]
    row = status_queries.find_instance(ctx.repo.engine, uid) if valid_uid(uid) else None
    if row is None or not row["derived"] or row["sop_class_uid"] != SECONDARY_CAPTURE:
        raise HTTPException(404, f"no heatmap (secondary capture) {uid[:80]} on this node")
    try:
        png = thumbnail_png(ctx.store.path(row["path"]))
    except FindingsError as exc:
        raise HTTPException(500, str(exc)) from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


def model_card(request: Request) -> Response:
    ctx = request.app.state.ctx
    models, _ = model_inventory(ctx.config.models_dir)
    entry = next((m for m in models if m.task == request.path_params["task"]), None)
    if entry is None:
        raise HTTPException(404, f"no model for task {request.path_params['task'][:40]!r}")
    card = entry.card.read_text(encoding="utf-8") if entry.card is not None else ""
    return _render(request, "model.html", {"model": entry, "card": card})


def _same_origin(request: Request) -> bool:
    """A form POST from another site (CSRF) carries its own Origin: refuse it."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def resend(request: Request) -> Response:
    if not _same_origin(request):
        raise HTTPException(403, "cross-site request refused")
    form = await request.form()
    destination = str(form.get("destination") or "") or None
    ctx = request.app.state.ctx
    count = await run_in_threadpool(ctx.repo.resend_failed, destination)
    if ctx.audit_trail is not None:
        ctx.audit_trail.record(audit.resend_requested(
            node_aet=ctx.config.node.ae_title, destination=destination, count=count))
    log_event(log, "http.resend", destination=destination or "*", deliveries=count)
    return RedirectResponse(f"/?resent={count}#failures", status_code=303)


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/studies/{uid}", study, methods=["GET"]),
    Route("/instances/{uid}/heatmap.png", heatmap, methods=["GET"]),
    Route("/models/{task}", model_card, methods=["GET"]),
    Route("/resend", resend, methods=["POST"]),
]
