"""Facts about the real DICOM samples and a polarity statistic, shared by the pipelines tests.

(A plain module, not conftest: test folders have no __init__.py, so helpers need a unique name.)
"""

from __future__ import annotations

import numpy as np

CHEST_SAMPLES = {
    # real frontal chest DICOM file: its Photometric Interpretation
    "orthanctests_Monochrome1-Jpeg_CR.dcm": "MONOCHROME1",
    "pydicomdata_RG1_J2KI_CR_chest.dcm": "MONOCHROME1",
    "txv_siim_ptx_CR_chest_PA.dcm": "MONOCHROME2",
    "nhsx_nih_cxr_dx_sc.dcm": "MONOCHROME2",
}


def lung_and_mediastinum_means(pixels: np.ndarray) -> tuple[float, float, float]:
    """Mean intensity of the central right/left lung fields and of the mediastinum/spine column.

    On any frontal chest film in presentation polarity the mediastinum column is far brighter than
    the lung fields; a missed MONOCHROME1 inversion reverses that.
    """
    h, w = pixels.shape
    rows = slice(int(0.30 * h), int(0.55 * h))
    left = float(pixels[rows, int(0.20 * w):int(0.35 * w)].mean())
    right = float(pixels[rows, int(0.65 * w):int(0.80 * w)].mean())
    middle = float(pixels[rows, int(0.46 * w):int(0.54 * w)].mean())
    return left, right, middle
