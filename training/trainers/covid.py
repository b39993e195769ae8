"""COVID-19 trainer: a classifier (ResNet18, DenseNet121, VGG) on the whole image or on the lungs only.

lungs_only input needs a lung mask per image: the manual one from the manifest, else one predicted
by a lungs bundle named in the run config (lung_bundle). Source-balanced sampling
([train] sampling = "source_balanced") draws every source x class equally often, so that a
source with only positives cannot dominate what the network learns. Every COVID model card
reports the shortcut check (AUC with the lungs removed / lungs only) and per-source AUC.

Epoch selection. When the validation split holds images of a normal collection that is never
trained on (``HELD_OUT_NORMALS``, OpenIST in ``covid_multisource.csv``), the epoch is chosen by the
mean of two validation AUCs: ieee8023 COVID-19 vs ieee8023 other findings (within one collection,
so the collection cannot carry the label) and ieee8023 COVID-19 vs the held-out normals (are normal
lungs from an unseen hospital scored below COVID-19?). Otherwise: the validation AUC.
"""

from __future__ import annotations

from collections.abc import Sequence

from training.config import RunConfig
from training.covid_figures import selection_aucs
from training.distributed import DistContext
from training.manifest import ManifestRow
from training.tasks import COVID as SPEC
from training.trained import TrainedModel
from training.trainers.fit import fit as fit_torch
from training.validation import Predictions, validation_metric

SELECTION_NAME = "mean_auc_within_ieee8023_and_covid_vs_heldout_normals"


def select(pred: Predictions, val_rows: Sequence[ManifestRow]) -> tuple[str, float]:
    aucs = selection_aucs(pred.scores, pred.labels, [r.dataset for r in val_rows])
    if aucs["mean"] is None:
        return validation_metric(pred, SPEC)
    return SELECTION_NAME, float(aucs["mean"])


def fit(cfg: RunConfig, ctx: DistContext, *, resume: bool = False) -> TrainedModel | None:
    return fit_torch(cfg, SPEC, ctx, resume=resume, selection=select)
