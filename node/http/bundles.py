"""The model bundles the node runs, read from their metadata (no torch): for the dashboard and /metrics.

The choice per task is the one the pipeline makes (:class:`pipelines.bundle.BundleRegistry`:
the highest version), so what is listed is what a worker of this configuration loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import BundleError

CARD_FILE = Path("docs") / "README.md"


@dataclass(frozen=True)
class ModelEntry:
    task: str
    name: str
    version: str
    architecture: str
    caution: str
    card: Path | None  # the bundle's model card, when it ships one


def model_inventory(models_dir: Path) -> tuple[list[ModelEntry], str]:
    """(one entry per task that has a bundle, a problem line or "").

    pipelines.bundle is imported on the first call: it pulls in torch (seconds on 2 cores), which a
    process that only serves pages or answers ``cxr-node status`` should not pay at start-up.
    """
    from pipelines.bundle import TASKS, BundleRegistry

    try:
        registry = BundleRegistry(models_dir)
    except BundleError as exc:
        return [], str(exc)
    entries = []
    for task in TASKS:
        if not registry.bundles[task]:
            continue
        path, meta = registry.choose(task)
        card = path / CARD_FILE
        entries.append(ModelEntry(task=task, name=meta.name, version=meta.version,
                                  architecture=meta.architecture, caution=meta.reader_caution,
                                  card=card if card.is_file() else None))
    missing = registry.missing_tasks()
    return entries, (f"no bundle for task(s) {', '.join(missing)} under {models_dir}" if missing else "")
