"""``GET /metrics``: Prometheus text exposition, every name starting with ``cxr_node_``.

Most figures are read from the database at scrape time by a custom collector
(:class:`NodeCollector`), so they are the same whichever process (``serve``, ``cxr-node
worker``) did the work and survive a restart. What the database does not hold is counted in
this process:

- refused instances (nothing is stored for them): counted where they are refused, by the STOW-RS
  handler and the C-STORE handler (``node.scp``), in one ``node.ingest.outcomes.ReceiveOutcomes``;
- the STOW-RS request duration histogram.

Families:
  cxr_node_instances_received_total{protocol,outcome,status}  stored (database) / refused (process)
  cxr_node_results_stored_total                               result objects written by workers
  cxr_node_jobs{state}                                        jobs now in each state
  cxr_node_deliveries{destination,state}                      outbox rows now in each state
  cxr_node_job_duration_seconds                               histogram: created -> done
  cxr_node_receive_to_delivered_seconds                       histogram: study complete -> sent
  cxr_node_disk_free_bytes, cxr_node_disk_min_free_bytes      the store's disk and its watermark
  cxr_node_model_info{task,name,version}                      1 per bundle the node runs
  cxr_node_database_up                                        0 when the scrape could not read it
  cxr_node_stow_request_seconds                               histogram, this process
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.errors import DatabaseError
from node.http.bundles import model_inventory
from node.repository import status as status_queries

STOW_CALLING_AET = "STOW-RS"  # the calling_aet recorded for instances received over DICOMweb
_DB_UP = "1 when the scrape could read the database"


class NodeCollector(Collector):
    """Reads the database, the disk and the model bundles on every scrape."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        disk = GaugeMetricFamily("cxr_node_disk_free_bytes", "Free bytes on the instance store's file system")
        disk.add_metric([], float(shutil.disk_usage(ctx.store.root).free))
        yield disk
        yield GaugeMetricFamily("cxr_node_disk_min_free_bytes",
                                "Watermark below which new instances are refused ([node] min_free_disk_mb)",
                                value=float(ctx.store.min_free_bytes))
        models = GaugeMetricFamily("cxr_node_model_info", "Model bundles this node runs (value 1)",
                                   labels=["task", "name", "version"])
        for entry in model_inventory(ctx.config.models_dir)[0]:
            models.add_metric([entry.task, entry.name, entry.version], 1.0)
        yield models
        received = CounterMetricFamily("cxr_node_instances_received",
                                       "Instances received, by protocol and outcome (refused: this process)",
                                       labels=["protocol", "outcome", "status"])
        for (protocol, status), n in sorted(ctx.outcomes.snapshot().items()):
            received.add_metric([protocol, "refused", status], float(n))
        try:
            counts = status_queries.metric_counts(ctx.repo.engine)
        except DatabaseError:
            yield received
            yield GaugeMetricFamily("cxr_node_database_up", _DB_UP, value=0.0)
            return
        yield GaugeMetricFamily("cxr_node_database_up", _DB_UP, value=1.0)
        stored: Counter[str] = Counter()
        results = 0
        for aet, derived, n in counts["received"]:
            if derived:
                results += n
            else:
                stored["dicomweb" if aet == STOW_CALLING_AET else "dimse"] += n
        for protocol in ("dimse", "dicomweb"):
            received.add_metric([protocol, "stored", "0x0000"], float(stored[protocol]))
        yield received
        yield CounterMetricFamily("cxr_node_results_stored",
                                  "Result objects (SEG, SR, SC) written by workers", value=float(results))
        jobs = GaugeMetricFamily("cxr_node_jobs", "Analysis jobs by state", labels=["state"])
        for state, n in counts["jobs"].items():
            jobs.add_metric([state], float(n))
        yield jobs
        deliveries = GaugeMetricFamily("cxr_node_deliveries", "Outbox rows by destination and state",
                                       labels=["destination", "state"])
        seen = {(dest, state): n for dest, state, n in counts["deliveries"]}
        for dest in sorted({d.name for d in ctx.config.destinations} | {d for d, _ in seen}):
            for state in ("pending", "sent", "failed"):
                deliveries.add_metric([dest, state], float(seen.get((dest, state), 0)))
        yield deliveries
        yield _histogram("cxr_node_job_duration_seconds",
                         "Seconds from a job's creation (study complete) to done", counts["job_duration"])
        yield _histogram("cxr_node_receive_to_delivered_seconds",
                         "Seconds from the last received image of a study to a result object's delivery",
                         counts["delivery_latency"])


def _histogram(name: str, documentation: str, data: dict[str, Any]) -> HistogramMetricFamily:
    buckets = [(repr(float(b)), float(c)) for b, c in data["buckets"]] + [("+Inf", float(data["count"]))]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=data["sum"])


class MetricsRegistry:
    """One registry per application: the database collector plus this process's histograms."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(ctx))
        self.stow_seconds = Histogram("cxr_node_stow_request_seconds",
                                      "STOW-RS request duration (this process)", registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_endpoint(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [Route("/metrics", metrics_endpoint, methods=["GET"])]
