"""Task 1, projection: frontal (PA/AP) or lateral, with probability.

A lateral image stops the chain (lung, COVID and GGO models are trained on frontal views only), so
this runs first on every image. Labels are ``[frontal, lateral]``; the network's positive probability
is P(lateral), called lateral at or above the bundle's operating threshold.

The DICOM header is a second witness. View Position (0018,5101) is set at acquisition by the
modality or the radiographer; :func:`header_projection` reads it. The chest pipeline stops the
chain when either the model or the header says lateral. The model's laterals all come from one
collection, so its weakest call is a lateral from an unseen hospital taken for frontal, and
analysing a lateral as frontal sends wrong lung, COVID-19 and GGO objects to the PACS. Not
analysing a frontal only costs a result.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from pipelines.bundle import LoadedBundle
from pipelines.preprocess import prepare_input
from pipelines.results import Projection, ProjectionResult, SourceImage
from pipelines.runtime import inference, positive_probability, stack

# PS3.3 defined terms (CR Series and DX Positioning modules): PA/AP are frontal, LL/RL lateral.
# RLD/LLD (decubitus: a frontal beam on a patient lying on one side) and RLO/LLO (oblique) name
# neither, so they are no evidence.
# "LATERAL"/"LAT" are not defined terms but some modalities write them.
HEADER_VIEWS = {"PA": Projection.FRONTAL, "AP": Projection.FRONTAL,
                "LL": Projection.LATERAL, "RL": Projection.LATERAL,
                "LATERAL": Projection.LATERAL, "LAT": Projection.LATERAL}


def header_projection(ds: Dataset | None) -> tuple[str, Projection | None] | None:
    """(View Position as written, the projection it names or None); None when the header has none."""
    if ds is None:
        return None
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if not value:
        return None
    return value, HEADER_VIEWS.get(value)


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
