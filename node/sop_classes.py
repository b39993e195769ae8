"""Which objects the node stores, and which of them it analyses.

A PACS forwards whole studies: beside the radiographs, a chest study often holds a dose report
(X-Ray Radiation Dose SR), presentation states, key objects, another system's SR or SEG, a
scanned document. Refusing those at negotiation made the senders fail the study: dcmtk
``dcmsend`` halts at the first instance it cannot send (its default), and an Orthanc store job
fails as a whole ("Cannot transcode ... to one of [ ]"), so the radiographs after the refused
object never arrived. The node therefore accepts every Storage SOP Class (PS3.4 Annex B) that
pynetdicom knows, stores each instance durably like any other, and analyses only the
single-frame radiograph classes below; the others are kept with their study (and purged with it)
and produce no result. An abstract syntax that is not a Storage SOP Class is still refused per
presentation context.
"""

from __future__ import annotations

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AllStoragePresentationContexts

# What the pipeline analyses: single-frame projection radiographs (and the single-frame secondary
# captures that teaching files and converted films arrive as). Multi-frame classes are not among
# them: the pipeline analyses one frame.
ANALYSED_SOP_CLASSES: tuple[str, ...] = (
    str(ComputedRadiographyImageStorage),
    str(DigitalXRayImageStorageForPresentation),
    str(DigitalXRayImageStorageForProcessing),
    str(SecondaryCaptureImageStorage),
)
# Everything the listener and STOW-RS accept: every Storage SOP Class (170 in pynetdicom 3.0).
STORED_SOP_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(
    [*ANALYSED_SOP_CLASSES, *(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)]))
_ANALYSED = frozenset(ANALYSED_SOP_CLASSES)
_STORED = frozenset(STORED_SOP_CLASSES)


def is_analysed(sop_class_uid: str) -> bool:
    """True for the radiograph classes the pipeline reads; every other stored object is kept only."""
    return str(sop_class_uid) in _ANALYSED


def is_stored(sop_class_uid: str) -> bool:
    """True for a Storage SOP Class the node accepts."""
    return str(sop_class_uid) in _STORED
