"""Task 1, projection: frontal (PA/AP) or lateral, with probability.

A lateral image stops the chain (lung, COVID and GGO models are trained on frontal views only), so
this runs first on every image. Labels are ``[frontal, lateral]``; the network's positive probability
is P(lateral), called lateral at or above the bundle's operating threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.bundle import LoadedBundle
from pipelines.preprocess import prepare_input
from pipelines.results import Projection, ProjectionResult, SourceImage
from pipelines.runtime import inference, positive_probability, stack


class ProjectionClassifier:
    def __init__(self, bundle: LoadedBundle) -> None:
        self.bundle = bundle
        self.spec = bundle.metadata.input
        self.threshold = float(bundle.metadata.operating_threshold)

    def predict(self, images: Sequence[SourceImage]) -> list[ProjectionResult]:
        if not images:
            return []
        batch = stack([prepare_input(im.pixels, self.spec).array for im in images], self.bundle.device)
        with inference(self.bundle.device):
            p_lateral = positive_probability(self.bundle.network(batch)).cpu().tolist()
        results = []
        for p in p_lateral:
            lateral = p >= self.threshold
            results.append(ProjectionResult(
                projection=Projection.LATERAL if lateral else Projection.FRONTAL,
                probability=float(p if lateral else 1.0 - p),
                model=self.bundle.info,
            ))
        return results
