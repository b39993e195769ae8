"""Training-only "any finding" head for the COVID classifier ([train] finding_aux).

Why: in these data every COVID-19 image is from ieee8023 and most negatives from NIH, and inside
ieee8023 the model also reads the sub-collection (session 8: the Hannover pictures score about 0.95
whatever their label, and the collection's own "No Finding" pictures score as high as its COVID-19
ones). The COVID-19 label alone therefore rewards whatever tells the collections apart. The datasets
also carry a label that is NOT confounded with the collection: NIH has 500 "No Finding" and 500
"Pneumonia" images, ieee8023 has "No Finding" pictures beside its COVID-19 and other-finding ones. A
second head, trained on "abnormal lungs vs no finding" INSIDE each of those datasets, asks the shared
features to see lung abnormality, a signal that the collection cannot supply because both labels
come from the same collection.

The head lives only during training, like the source adversary (training/adversary.py): it reads
the input of the network's last ``nn.Linear`` through a forward hook, so the exported bundle is the
plain COVID-19 classifier and its output is unchanged in meaning. The ``train_loss`` column of
``metrics.csv`` includes the head's weighted loss; the validation figures do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.errors import ConfigError
from training.feature_hook import PenultimateFeatures
from training.manifest import ManifestRow

NO_FINDING = "no finding"


def has_finding(findings: Sequence[str]) -> bool:
    """True when the list names a finding other than "No Finding" (an empty list means none)."""
    return any(f.strip() and f.strip().lower() != NO_FINDING for f in findings)


def finding_labels(rows: Sequence[ManifestRow], datasets: Sequence[str]) -> list[int]:
    """Per row: 1 = a finding, 0 = no finding, -1 = not used (its dataset is not listed).

    Only datasets whose findings are complete may be listed: there an empty list (NIH's adapter
    drops "No Finding") or "No Finding" alone means normal lungs, and anything else is abnormal.
    """
    chosen = set(datasets)
    out: list[int] = []
    for r in rows:
        if r.dataset not in chosen:
            out.append(-1)
            continue
        out.append(1 if has_finding(r.findings) else 0)
    return out


class FindingHead(nn.Module):
    """Predicts "any finding" from the classifier's penultimate features (no gradient reversal)."""

    def __init__(self, net: nn.Module, labels: Sequence[int], weight: float) -> None:
        super().__init__()
        used = [y for y in labels if y >= 0]
        if not used or len(set(used)) < 2:
            raise ConfigError(
                "finding_aux needs training images both with and without findings in "
                f"[train] finding_aux_datasets (got {sum(used)} with, {len(used) - sum(used)} without)"
            )
        self._features = PenultimateFeatures(net, "finding_aux")
        self.head = nn.Linear(self._features.size, 1)
        self.register_buffer("labels", torch.as_tensor(list(labels), dtype=torch.float32), persistent=False)
        self.weight = weight

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Weighted BCE of "any finding" on the batch's labelled rows (0 when it holds none)."""
        features = self._features.take("FindingHead.loss")
        labels = self.labels[indices.to(self.labels.device)]
        keep = labels >= 0
        if not bool(keep.any()):
            return features.sum() * 0.0
        logits = self.head(features[keep]).reshape(-1)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(logits, labels[keep])

    def detach(self) -> None:
        """Remove the hook: the network is exported without any trace of the head."""
        self._features.remove()
