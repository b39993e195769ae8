"""Moved to :mod:`node.repository.status`; this name stays until its importers (node.http.metrics,
node.http.dashboard, node.cli.status and two tests) import the new one."""

from node.repository.status import (
    DURATION_BUCKETS,
    failures,
    find_instance,
    metric_counts,
    overview,
    study_detail,
    study_state,
)

__all__ = [
    "DURATION_BUCKETS",
    "failures",
    "find_instance",
    "metric_counts",
    "overview",
    "study_detail",
    "study_state",
]
