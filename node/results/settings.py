"""Settings of the result writers: who we say we are, and where the objects go (series).

Series Numbers and Descriptions are fixed and documented in deploy/conformance/results.md so
that a PACS hanging protocol or a worklist rule can find the node's output by number.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

MANUFACTURER = "cxr-node"
MODEL_NAME = "cxr-node chest X-ray AI"

SEG_SERIES_NUMBER = 9101
SR_SERIES_NUMBER = 9102
SC_SERIES_NUMBER = 9103
KOS_SERIES_NUMBER = 9104
SEG_SERIES_DESCRIPTION = "AI lungs + GGO segmentation (research use)"
SR_SERIES_DESCRIPTION = "AI chest X-ray findings (research use)"
SC_SERIES_DESCRIPTION = "AI heatmap overlay (research use)"
KOS_SERIES_DESCRIPTION = "AI results key objects (research use)"

# Syntaxes the writers can store each object in (highdicom: a BINARY SEG is native or JPEG 2000).
SEG_TRANSFER_SYNTAXES = (JPEG2000Lossless, ExplicitVRLittleEndian)
SC_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, JPEGLSLossless)

RESEARCH_USE_NOTE = (
    "Research use only, not for diagnosis. Produced automatically by cxr-node; the result has "
    "not been reviewed by a physician."
)


def software_version() -> str:
    """Version of the installed cxr-node distribution ("0+unknown" when run from a bare tree)."""
    try:
        return metadata.version("cxr-node")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class ResultSettings:
    """Everything about the result objects that a site may set (see the conformance statement).

    ``fractional_ggo`` writes a FRACTIONAL (probability) SEG whose GGO segment is the GGO
    probability map, when the pipeline produced one; BINARY otherwise (PS3.3 C.8.20.2).
    ``sc_max_side`` bounds the secondary capture's longest side in pixels (the overlay is
    downscaled beyond it; a 2446x2010 RGB capture is 15 MB uncompressed).
    ``seg_transfer_syntax`` / ``sc_transfer_syntax``: how the objects are written and stored (every
    destination still gets them in a syntax it accepts, node.delivery). The SEG is JPEG 2000 Lossless
    by default: a native 1-bit SEG whose Columns is not a multiple of 8 cannot be served frame by
    frame by Orthanc 1.10 (see seg.py), and encoding two 1-bit frames costs little. The capture is
    Explicit VR Little Endian by default: JPEG 2000 on a 2048 px RGB capture cost ~0.3-0.5 s of the
    worker's time per image (more than half the models' time); a destination that wants it
    compressed names a syntax in its ``transfer_syntaxes`` and gets it compressed on the way out.
    ``key_object_selection`` adds a KOS (series 9104) selecting the source and the results.
    """

    manufacturer: str = MANUFACTURER
    model_name: str = MODEL_NAME
    software_version: str = ""
    device_serial_number: str = "1"
    institution_name: str | None = None
    institutional_department_name: str | None = None
    seg_series_number: int = SEG_SERIES_NUMBER
    sr_series_number: int = SR_SERIES_NUMBER
    sc_series_number: int = SC_SERIES_NUMBER
    kos_series_number: int = KOS_SERIES_NUMBER
    seg_series_description: str = SEG_SERIES_DESCRIPTION
    sr_series_description: str = SR_SERIES_DESCRIPTION
    sc_series_description: str = SC_SERIES_DESCRIPTION
    kos_series_description: str = KOS_SERIES_DESCRIPTION
    fractional_ggo: bool = False
    sc_max_side: int = 2048
    seg_transfer_syntax: str = JPEG2000Lossless  # or ExplicitVRLittleEndian
    sc_transfer_syntax: str = ExplicitVRLittleEndian  # or JPEG2000Lossless, RLELossless, JPEGLSLossless
    key_object_selection: bool = False

    def __post_init__(self) -> None:
        if not self.software_version:
            object.__setattr__(self, "software_version", software_version())
        numbers = (self.seg_series_number, self.sr_series_number, self.sc_series_number,
                   self.kos_series_number)
        if len(set(numbers)) != len(numbers) or min(numbers) < 1:
            raise ValueError(f"ResultSettings: series numbers must be distinct and positive, got {numbers}")
        if self.seg_transfer_syntax not in SEG_TRANSFER_SYNTAXES:
            raise ValueError(f"ResultSettings: seg_transfer_syntax must be one of {SEG_TRANSFER_SYNTAXES}, "
                             f"got {self.seg_transfer_syntax!r}")
        if self.sc_transfer_syntax not in SC_TRANSFER_SYNTAXES:
            raise ValueError(f"ResultSettings: sc_transfer_syntax must be one of {SC_TRANSFER_SYNTAXES}, "
                             f"got {self.sc_transfer_syntax!r}")
        if self.sc_max_side < 64:
            raise ValueError(f"ResultSettings: sc_max_side must be >= 64, got {self.sc_max_side}")
        for name in ("manufacturer", "model_name"):
            value = getattr(self, name)
            if not value or len(value) > 64:
                raise ValueError(f"ResultSettings: {name} must be 1-64 characters (DICOM LO), got {value!r}")
