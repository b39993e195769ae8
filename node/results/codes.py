"""Every coded concept the result writers put into SEG, SR and SC objects, in one place.

Codes are taken from the DICOM Content Mapping Resource (PS3.16) where it has one; each
constant says which Context Group (CID) or Template (TID) row it serves. Where no standard
concept exists, a local code of the private coding scheme ``99CXRNODE`` is used (PS3.16
section 8.1: designators beginning with "99" are private) and declared in the Coding Scheme
Identification Sequence of the SR (PS3.3 C.12.1.1.4).

Choice of the ground-glass-opacity code
---------------------------------------
The GGO segment and the GGO SR findings use ``(112120, DCM, "Ground glass opacity")``:

* it is the concept DICOM itself defines for this finding, in CID 6102 "Thoracic Radiographic
  Findings" / CID 6104 used by the Chest CAD SR (TID 4100 family), i.e. for findings on
  *projection chest radiographs*, which is exactly what this node reads;
* SNOMED CT has GGO concepts only as CT-oriented "finding of lung" descriptions whose ids are
  not listed in any DICOM context group, so no segmentation or SR consumer is guaranteed to
  know them, and none could be verified offline here; a wrong SCT id would be worse than a
  correct DCM one;
* DCM codes are free to use, SNOMED CT codes need an affiliate licence in some countries.
The segment's category is ``(49755003, SCT, "Morphologically Abnormal Structure")`` from
CID 7150 "Segmentation Property Categories"; the lungs use ``(91723000, SCT, "Anatomical
Structure")`` with ``(39607008, SCT, "Lung")`` (CID 7150 / CID 7151).

COVID-19 is ``(840539006, SCT, "COVID-19")`` ("Disease caused by severe acute respiratory
syndrome coronavirus 2"), the SNOMED CT concept released in 2020 for the disease.
"""

from __future__ import annotations

from highdicom.sr.coding import CodedConcept
from pydicom.sr.codedict import codes

LOCAL_SCHEME = "99CXRNODE"
LOCAL_SCHEME_NAME = "cxr-node local codes"
LOCAL_SCHEME_RESPONSIBLE = "cxr-node project"

# --- SEG: Segmented Property Category / Type (CID 7150 / CID 7151) -------------------------
ANATOMICAL_STRUCTURE = CodedConcept("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
LUNG = CodedConcept("39607008", "SCT", "Lung")
GROUND_GLASS_OPACITY = CodedConcept("112120", "DCM", "Ground glass opacity")

# Algorithm Family (CID 7162): every model of this node is a trained neural network.
ARTIFICIAL_INTELLIGENCE = CodedConcept(
    codes.cid7162.ArtificialIntelligence.value,
    codes.cid7162.ArtificialIntelligence.scheme_designator,
    codes.cid7162.ArtificialIntelligence.meaning,
)

# --- SR TID 1500 root -----------------------------------------------------------------------
# Procedure Reported (TID 1500 row 4): the imaging procedure, not the algorithm.
PLAIN_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
# Observer type "Device" (CID 270), for the TID 1004 device observer.
DEVICE = CodedConcept("121007", "DCM", "Device")
# TID 1500 row 12 container and its TEXT items (row 14).
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = CodedConcept("121106", "DCM", "Comment")

# --- projection group ------------------------------------------------------------------------
IMAGE_VIEW = CodedConcept("111031", "DCM", "Image View")
# CID 4010 "DX View".
FRONTAL = CodedConcept("399033003", "SCT", "frontal")
LATERAL = CodedConcept("399067008", "SCT", "lateral")

# --- COVID-19 group --------------------------------------------------------------------------
COVID_19 = CodedConcept("840539006", "SCT", "COVID-19")
# CID 240 "Present/Absent" (SCT qualifier values).
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")  # PS3.16 Annex D
THRESHOLD_VALUE = CodedConcept("122411", "DCM", "Threshold Value")

# --- GGO boxes and extent, lung area ---------------------------------------------------------
# A detector score, not a calibrated probability: "Certainty of Finding" (CID 6048 family).
CERTAINTY_OF_FINDING = CodedConcept("111012", "DCM", "Certainty of Finding")
AREA = CodedConcept("42798000", "SCT", "Area")
EXTENT = CodedConcept("260858005", "SCT", "Extent")  # GGO area / lung area, in %

# --- units (UCUM, CID 7181) ------------------------------------------------------------------
UNIT_NONE = CodedConcept("1", "UCUM", "no units")
UNIT_PERCENT = CodedConcept("%", "UCUM", "Percent")
UNIT_MM2 = CodedConcept("mm2", "UCUM", "square millimeter")
# A UCUM annotation ("{...}" is dimensionless 1): used for an area when the image carries no
# pixel spacing, so that no physical size is claimed.
UNIT_PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")

# --- local codes: which spacing attribute calibrated an area (TID 300 "Measurement Method") --
METHOD_AREA_PIXEL_SPACING = CodedConcept(
    "AREA-PS", LOCAL_SCHEME, "Area from Pixel Spacing (0028,0030), patient plane")
METHOD_AREA_IMAGER_PIXEL_SPACING = CodedConcept(
    "AREA-IPS", LOCAL_SCHEME, "Area from Imager Pixel Spacing (0018,1164), detector plane")
METHOD_AREA_IMAGER_PIXEL_SPACING_CORRECTED = CodedConcept(
    "AREA-IPS-ERMF", LOCAL_SCHEME,
    "Area from Imager Pixel Spacing / Est. Radiogr. Magnification")
METHOD_AREA_PIXEL_COUNT = CodedConcept(
    "AREA-PX", LOCAL_SCHEME, "Area as pixel count, the image has no pixel spacing")

# --- Contributing Equipment (PS3.3 C.12.1.1.5): Purpose of Reference, CID 7005 --------------
# CID 7005 "Contributing Equipment Purposes of Reference" has no "Processing Algorithm"
# concept; its entry for equipment that processed the images is "Processing Equipment".
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")
