"""DICOM result writers: the node's answer to the PACS (IHE AI Results profile objects).

``build_result_objects(source, result)`` turns one pipeline result into DICOM objects:

* analysed frontal image: [SEG (lungs + GGO), Comprehensive 3D SR (TID 1500), RGB Secondary Capture];
* lateral (not analysed) image: [Comprehensive 3D SR saying it was not analysed and why];
* optionally (``ResultSettings.key_object_selection``) a Key Object Selection document last.

All objects share the source's Patient and Study, one Content Date/Time, and go into fixed
Series (numbers and descriptions in :mod:`node.results.settings`, documented in
deploy/conformance/results.md).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import pydicom
from pydicom.uid import generate_uid

from node.results.common import (
    ResultContext,
    ResultInputError,
    ResultSeries,
    check_inputs,
    copy_study_attributes,
    make_context,
    source_person_names_as_they_are,
)
from node.results.kos import build_kos
from node.results.sc import build_sc
from node.results.seg import build_seg
from node.results.settings import ResultSettings
from node.results.sr import build_sr
from pipelines.results import ChestResult, SourceImage

__all__ = ["ResultInputError", "ResultSeries", "ResultSettings", "build_result_objects"]

log = logging.getLogger(__name__)


def build_result_objects(source: pydicom.Dataset, result: ChestResult, *,
                         settings: ResultSettings | None = None,
                         now: datetime.datetime | None = None,
                         image: SourceImage | None = None,
                         series: ResultSeries | None = None,
                         instance_number: int = 1,
                         timings_ms: dict[str, float] | None = None) -> list[pydicom.Dataset]:
    """The result objects for one source image, in send order (SEG before the SR that cites it).

    ``source`` must hold its Pixel Data unless ``image`` (the pipeline's decoded SourceImage of the
    same instance) is given: the secondary capture is drawn on it. ``now`` fixes the Content
    Date/Time (default: the current local time). ``series`` puts the objects into existing result
    series (the worker passes one per job, so a study's results share one series per object type)
    and ``instance_number`` numbers them within it (default: new series, number 1).
    ``timings_ms``, when given, receives the milliseconds spent on each object ("seg", "sr", "sc",
    "kos"): ``cxr-node analyze --json`` and bench/pipeline.py report them.

    Raises :class:`ResultInputError` (a ValueError) when the source lacks the identifying
    attributes or does not match the result (other SOP Instance UID, other pixel grid).
    """
    check_inputs(source, result)
    with source_person_names_as_they_are():
        ctx = make_context(source, settings or ResultSettings(), now, series=series,
                           instance_number=instance_number)
        return _build(source, result, ctx, image, timings_ms if timings_ms is not None else {})


_T = TypeVar("_T")


def _timed(timings: dict[str, float], name: str, make: Callable[[], _T]) -> _T:
    started = time.perf_counter()
    made = make()
    timings[name] = round((time.perf_counter() - started) * 1000.0, 2)
    return made


def _build(source: pydicom.Dataset, result: ChestResult, ctx: ResultContext,
           image: SourceImage | None, timings: dict[str, float]) -> list[pydicom.Dataset]:
    uid = source.SOPInstanceUID
    if not result.analysed:
        sr = _timed(timings, "sr", lambda: build_sr(source, result, ctx))
        copy_study_attributes(sr, source)
        log.info("results for %s: SR only (not analysed: %s)", uid, result.not_analysed_reason)
        return _with_kos(source, result, ctx, [sr], timings)
    lung_tracking_uid, ggo_tracking_uid = generate_uid(), generate_uid()
    seg = _timed(timings, "seg", lambda: build_seg(source, result, ctx, lung_tracking_uid=lung_tracking_uid,
                                                   ggo_tracking_uid=ggo_tracking_uid))
    sr = _timed(timings, "sr", lambda: build_sr(source, result, ctx, seg=seg,
                                                lung_tracking_uid=lung_tracking_uid,
                                                ggo_tracking_uid=ggo_tracking_uid))
    sc = _timed(timings, "sc", lambda: build_sc(source, result, ctx, image))
    for obj in (seg, sr, sc):
        copy_study_attributes(obj, source)
    log.info("results for %s: SEG %s, SR %s, SC %s", uid, seg.SOPInstanceUID, sr.SOPInstanceUID,
             sc.SOPInstanceUID)
    return _with_kos(source, result, ctx, [seg, sr, sc], timings)


def _with_kos(source: pydicom.Dataset, result: ChestResult, ctx: ResultContext,
              objects: list[pydicom.Dataset], timings: dict[str, float]) -> list[pydicom.Dataset]:
    """Append the optional Key Object Selection document (last: it references the others)."""
    if not ctx.settings.key_object_selection:
        return objects
    kos = _timed(timings, "kos", lambda: build_kos(source, result, ctx, objects))
    copy_study_attributes(kos, source)
    return [*objects, kos]
