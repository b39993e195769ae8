"""Retention: finished studies leave the node once their newest object is ``[node].retention_days`` old.

Why: the node is a processing station, not the archive. The PACS keeps the images and the results the
node sent back; without a limit the instance store only grows until ``min_free_disk_mb`` refuses every new
study with 0xA700. A study is removed (its received instances, its result objects, their files, jobs and
deliveries) only when nothing is open for it: every instance belongs to a job, no job is queued or
running, no delivery is pending, and nothing of it arrived within the retention period. Failed jobs and
failed deliveries are final; the retention period is the operator's time to ``cxr-node resend`` them.
``retention_days = 0`` (the default) keeps everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.audit import AuditTrail, study_deleted
from node.errors import DatabaseError, StoreError
from node.logs import log_event
from node.repository import Repository
from node.store import InstanceStore

log = logging.getLogger("node.retention")

DAY_SECONDS = 86400.0
STUDIES_PER_ROUND = 100  # short write transactions; the loop comes back for the rest


@dataclass
class PurgeReport:
    dry_run: bool
    studies: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    files_missing: int = 0  # rows whose file was already gone (nothing to free)

    def summary(self) -> str:
        verb = "would be removed" if self.dry_run else "removed"
        return (f"{len(self.studies)} studies {verb} ({self.instances} instances, "
                f"{self.bytes / 2**20:.1f} MiB)")


def purge(repo: Repository, store: InstanceStore, older_than_days: float, *, now: float | None = None,
          dry_run: bool = False, max_studies: int = 0,
          on_removed: Callable[[str, int], None] | None = None) -> PurgeReport:
    """Remove every finished study older than ``older_than_days`` (all of them; ``max_studies`` caps it).

    ``on_removed(study, instances)`` runs right after each study is gone (not on a dry run): the
    retention loop audits there, so a node stopped halfway has audited every study it removed.
    """
    if not older_than_days > 0:
        raise ValueError(f"older_than_days must be > 0, got {older_than_days!r}")
    cutoff = (time.time() if now is None else now) - older_than_days * DAY_SECONDS
    report = PurgeReport(dry_run=dry_run)
    seen: set[str] = set()
    while not max_studies or len(report.studies) < max_studies:
        batch = [s for s in repo.retention_candidates(cutoff, STUDIES_PER_ROUND + len(seen)) if s not in seen]
        if not batch:
            break
        for study in batch:
            seen.add(study)
            files = repo.purge_study(study, cutoff, dry_run=dry_run)
            if files is None:  # something arrived or was re-queued meanwhile
                continue
            report.studies.append(study)
            report.instances += len(files)
            report.bytes += sum(size for _, size in files)
            if not dry_run:
                report.files_missing += sum(not store.remove(path) for path, _ in files)
                if on_removed is not None:
                    on_removed(study, len(files))
            log_event(log, "study.purged" if not dry_run else "study.purgeable", study=study,
                      instances=len(files))
            if max_studies and len(report.studies) >= max_studies:
                break
        if len(batch) < STUDIES_PER_ROUND:
            break
    return report


class RetentionLoop:
    """``serve``'s retention thread: :func:`purge` every ``interval`` seconds until stopped.

    Each study it removes leaves a PS3.15 A.5.3.5 "DICOM Study Deleted" record in ``audit_trail``
    (the node as the requestor, ``command = "retention"``), as ``cxr-node purge`` does for an
    operator: a deletion nobody asked for at that moment is the one an auditor most needs to see.
    Without a trail (``None``) nothing is audited.
    """

    def __init__(self, repo: Repository, store: InstanceStore, retention_days: float, interval: float,
                 stop: threading.Event, *, audit_trail: AuditTrail | None = None, node_aet: str = "") -> None:
        self.repo, self.store = repo, store
        self.retention_days, self.interval = retention_days, interval
        self.stop = stop
        self.audit_trail, self.node_aet = audit_trail, node_aet

    def _audit(self, study: str, instances: int) -> None:
        if self.audit_trail is not None:
            self.audit_trail.record(study_deleted(
                node_aet=self.node_aet, study_instance_uid=study, command="retention", by_operator=False,
                instances=instances))

    def run_once(self) -> PurgeReport | None:
        try:
            report = purge(self.repo, self.store, self.retention_days, on_removed=self._audit)
        except (DatabaseError, StoreError) as exc:  # try again next round: the database may come back
            log_event(log, "retention.error", logging.ERROR, error=str(exc))
            return None
        if report.studies:
            log_event(log, "retention.purged", studies=len(report.studies), instances=report.instances,
                      mib=round(report.bytes / 2**20, 1), files_missing=report.files_missing)
        return report

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_once()
            self.stop.wait(self.interval)
