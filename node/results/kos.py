"""Key Object Selection document (PS3.3 A.59, TID 2010) pointing at the source and its results.

Optional (``ResultSettings.key_object_selection``): some PACS and worklists flag a study or hang
AI results from a KOS. Title (113000, DCM, "Of Interest") from CID 7010; the device observer is
the node, as in the SR.
"""

from __future__ import annotations

import highdicom as hd
import pydicom

from node.results.common import ResultContext, contributing_equipment, reference_copy
from node.results.sr import device_observer
from pipelines.results import ChestResult

OF_INTEREST = hd.sr.CodedConcept("113000", "DCM", "Of Interest")
KOS_DESCRIPTION = "AI results (SEG, SR, heatmap) for this image; research use only, not for diagnosis"


def build_kos(source: pydicom.Dataset, result: ChestResult, ctx: ResultContext,
              results: list[pydicom.Dataset]) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS in its own series that selects the source image and every result object."""
    selected = [reference_copy(source), *results]
    settings = ctx.settings
    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST,
        referenced_objects=selected,
        observer_device_context=device_observer(settings),
        description=KOS_DESCRIPTION,
    )
    kwargs = ctx.common_kwargs()
    kwargs.pop("institution_name", None)
    kwargs.pop("institutional_department_name", None)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=selected,
        content=content,
        series_instance_uid=ctx.series.kos,
        series_number=settings.kos_series_number,
        sop_instance_uid=ctx.kos_instance_uid,
        instance_number=ctx.instance_number,
        manufacturer=settings.manufacturer,
        institution_name=settings.institution_name,
        institutional_department_name=settings.institutional_department_name,
        contributing_equipment=contributing_equipment(ctx, result),
        series_description=settings.kos_series_description,
        **kwargs,
    )

