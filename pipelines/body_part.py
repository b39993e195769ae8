"""Body Part Examined (0018,0015) that names a region other than the chest, for the chest pipeline's gate.

Why: a PACS routing rule that sends the wrong series (a hand, a knee, an abdomen) would otherwise get
lung, COVID-19 and GGO objects computed on an image that holds no lungs; the projection model gives
every image one of its two labels. The header is read conservatively. Only a value from the list
below stops the chain. That list holds terms of the DICOM body part vocabulary (PS3.16 CID 4031)
and common vendor spellings for regions that never contain the lungs. Empty, unknown, local or mixed
values (``CHEST``, ``THORAX``, ``PORT CHEST``, ``CHESTABDOMEN``, ``TORACE``, ...) are analysed as
before, because a chest radiograph with an odd header value must not lose its result.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

NOT_CHEST = frozenset({
    "ABDOMEN", "PELVIS", "HEAD", "SKULL", "BRAIN", "FACE", "JAW", "TMJ", "SINUS", "NOSE", "ORBIT",
    "EAR", "NECK", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX", "SACRUM", "HAND", "FINGER",
    "THUMB", "WRIST", "FOREARM", "ELBOW", "ARM", "HUMERUS", "UPPER ARM", "SHOULDER", "CLAVICLE",
    "SCAPULA", "HIP", "FEMUR", "THIGH", "KNEE", "PATELLA", "LEG", "LOWER LEG", "TIBIA", "FIBULA",
    "ANKLE", "FOOT", "HEEL", "CALCANEUS", "TOE", "BREAST", "KIDNEY", "BLADDER", "LOWER LIMB",
    "LOWERLIMB", "LOWER EXTREMITY", "EXTREMITY", "DENTAL", "TOOTH",
})


def non_chest_body_part(ds: Dataset | None) -> str | None:
    """The header's Body Part Examined when it names a region without lungs; None otherwise."""
    if ds is None:
        return None
    value = " ".join(str(ds.get("BodyPartExamined", "") or "").upper().split())
    return value if value in NOT_CHEST else None
