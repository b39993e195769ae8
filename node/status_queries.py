"""The read-only status queries under the name node.http.metrics, node.http.dashboard, node.cli.status
and two tests import: an alias of :mod:`node.repository.status`, where they live with the rest of the SQL."""

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
