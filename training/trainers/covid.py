"""COVID-19 trainer: VGG16/VGG19 as in the reference paper, or a lighter backbone
(ResNet18, DenseNet121), on the whole image or on the lungs only ([input] mode).

lungs_only input needs a lung mask per image: the manual one from the manifest, else one predicted
by a lungs bundle named in the run config (lung_bundle). Source-balanced sampling
([train] sampling = "source_balanced") draws every source x class equally often, so that a
source with only positives cannot dominate what the network learns. Every COVID model card
reports the shortcut check (AUC with the lungs removed / lungs only) and per-source AUC.

Epoch selection. When the validation split holds images of a normal collection that is never
trained on (``HELD_OUT_NORMALS``, OpenIST in ``covid_multisource.csv``), the epoch is chosen by the
mean of two validation AUCs: ieee8023 COVID-19 vs ieee8023 other findings (within one collection,
so the collection cannot carry the label) and ieee8023 COVID-19 vs the held-out normals (are normal
lungs from an unseen hospital scored below COVID-19?). Otherwise: the validation AUC, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.config import RunConfig
from training.distributed import DistContext
from training.manifest import ManifestRow
from training.tasks import COVID as SPEC
from training.trainers.loop import Predictions, train_torch_task, validation_metric

WITHIN = "ieee8023"
HELD_OUT_NORMALS = ("openist",)
SELECTION_NAME = "mean_auc_within_ieee8023_and_covid_vs_heldout_normals"


def selection_aucs(
    scores: Sequence[float], labels: Sequence[int], datasets: Sequence[str]
) -> dict[str, float | None]:
    """Within-ieee8023 AUC, ieee8023 COVID-19 vs held-out normals AUC, and their mean (None if missing)."""
    from training.metrics import roc_auc

    s, y, d = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int), np.asarray(datasets)
    within = d == WITHIN
    held = np.isin(d, HELD_OUT_NORMALS) & (y == 0)
    pos = within & (y == 1)
    out: dict[str, float | None] = {"within": None, "vs_heldout_normals": None, "mean": None}
    if within.any() and len(set(y[within].tolist())) == 2:
        out["within"] = roc_auc(y[within], s[within])
    if held.any() and pos.any():
        m = pos | held
        out["vs_heldout_normals"] = roc_auc(y[m], s[m])
    if out["within"] is not None and out["vs_heldout_normals"] is not None:
        out["mean"] = 0.5 * (out["within"] + out["vs_heldout_normals"])
    return out


def select(pred: Predictions, val_rows: Sequence[ManifestRow]) -> tuple[str, float]:
    aucs = selection_aucs(pred.scores, pred.labels, [r.dataset for r in val_rows])
    if aucs["mean"] is None:
        return validation_metric(pred, SPEC)
    return SELECTION_NAME, float(aucs["mean"])


def train(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> Path | None:
    return train_torch_task(cfg, SPEC, ctx, resume=resume, selection=select)
