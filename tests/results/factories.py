"""Synthetic inputs for the result-writer tests: DX/CR sources and hand-built ChestResults.

The sources are valid "For Presentation" DX / CR images (PS3.3 A.26 / A.2) with the attributes
dciodvfy expects; their variants cover the cases the writers must handle (MONOCHROME1/2,
compressed or not, with PixelSpacing, only ImagerPixelSpacing, or no spacing; non-ASCII Patient
Names in ISO_IR 100 and ISO_IR 192).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from pipelines.results import (
    Box,
    ChestResult,
    CovidResult,
    GgoResult,
    LungResult,
    ModelInfo,
    PixelSpacing,
    Projection,
    ProjectionResult,
    SpacingSource,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@dataclass(frozen=True)
class SourceSpec:
    name: str
    modality: str = "DX"
    photometric: str = "MONOCHROME2"
    compressed: str | None = None  # None, "rle", "j2k"
    spacing: str | None = "PixelSpacing"  # "PixelSpacing", "ImagerPixelSpacing", None
    rows: int = 320
    columns: int = 256
    patient_name: str = "Doe^Jane"
    charset: str | None = None


SPECS = [
    SourceSpec("dx_mono2_raw_ps"),
    SourceSpec("dx_mono1_rle_ips", photometric="MONOCHROME1", compressed="rle", spacing="ImagerPixelSpacing"),
    SourceSpec("cr_mono1_j2k_nospacing", modality="CR", photometric="MONOCHROME1", compressed="j2k",
               spacing=None, patient_name="Müller^Jürgen", charset="ISO_IR 100"),
    SourceSpec("cr_mono2_raw_ips_utf8", modality="CR", spacing="ImagerPixelSpacing",
               patient_name="山田^太郎=やまだ^たろう", charset="ISO_IR 192"),
]


def make_source(spec: SourceSpec, seed: int = 0) -> pydicom.Dataset:
    """A chest-like 12-bit radiograph as a pydicom Dataset (written and read back once)."""
    rng = np.random.default_rng(seed)
    rows, cols = spec.rows, spec.columns
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = np.exp(-(((xx - cols / 2) / (0.45 * cols)) ** 6 + ((yy - rows / 2) / (0.48 * rows)) ** 6))
    lungs = np.zeros((rows, cols))
    for cx in (0.3, 0.7):
        lungs += np.exp(-(((xx - cx * cols) / (0.14 * cols)) ** 2 + ((yy - 0.5 * rows) / (0.3 * rows)) ** 2))
    img = 3000 * body - 1800 * np.clip(lungs, 0, 1) + rng.normal(0, 40, (rows, cols)) + 500
    img = np.clip(img, 0, 4095).astype(np.uint16)  # bright = dense, as MONOCHROME2 shows
    if spec.photometric == "MONOCHROME1":
        img = (4095 - img).astype(np.uint16)

    now = datetime.datetime(2026, 11, 26, 8, 0, 0)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = DigitalXRayImageStorageForPresentation if spec.modality == "DX" else CR_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if spec.charset:
        ds.SpecificCharacterSet = spec.charset
    ds.PatientName = spec.patient_name
    ds.PatientID = f"PID-{spec.name}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = f"ACC-{spec.name}"[:16]
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = ""
    ds.Modality = spec.modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U" if spec.modality == "DX" else None
    if spec.modality == "CR":
        del ds.ImageLaterality
        ds.Laterality = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.AcquisitionDeviceProcessingDescription = ""
    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.BurnedInAnnotation = "NO"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = -1 if spec.photometric == "MONOCHROME1" else 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.LossyImageCompression = "00"
        view = Dataset()
        view.CodeValue = "399348003"
        view.CodingSchemeDesignator = "SCT"
        view.CodeMeaning = "antero-posterior"
        ds.ViewCodeSequence = [view]
        ds.PatientOrientation = ["L", "F"]
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    if spec.spacing == "PixelSpacing":
        ds.PixelSpacing = [0.5, 0.5]
        ds.ImagerPixelSpacing = [0.55, 0.55]
        ds.EstimatedRadiographicMagnificationFactor = 1.1
        if spec.modality == "DX":
            ds.PixelSpacingCalibrationType = "GEOMETRY"
    elif spec.spacing == "ImagerPixelSpacing":
        ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = img.tobytes()
    if spec.compressed == "rle":
        ds.compress(RLELossless, img)
    elif spec.compressed == "j2k":
        ds.compress(JPEG2000Lossless, img)
    return ds


MODEL = {
    task: ModelInfo(name=f"cxr-{task}", version="1.2.3", task=task, architecture=arch)
    for task, arch in [("projection", "densenet121"), ("lungs", "unet"), ("covid", "densenet121"),
                       ("ggo_detection", "yolo11n"), ("ggo_segmentation", "unet")]
}


def spacing_of(ds: pydicom.Dataset) -> PixelSpacing | None:
    """The spacing the pipeline would report (PixelSpacing first, then ImagerPixelSpacing)."""
    for keyword, source in (("PixelSpacing", SpacingSource.PIXEL_SPACING),
                            ("ImagerPixelSpacing", SpacingSource.IMAGER_PIXEL_SPACING)):
        value = ds.get(keyword)
        if value and float(value[0]) > 0 and float(value[1]) > 0:
            return PixelSpacing(float(value[0]), float(value[1]), source)
    return None


def make_result(ds: pydicom.Dataset, *, projection: Projection = Projection.FRONTAL, seed: int = 1,
                n_boxes: int = 2, positive: bool = True, with_probability_map: bool = True) -> ChestResult:
    """A ChestResult on the source grid with two lung ellipses, GGO blobs and boxes around them."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    spacing = spacing_of(ds)
    proj = ProjectionResult(projection=projection, probability=0.93, model=MODEL["projection"])
    if projection is Projection.LATERAL:
        return ChestResult(source="synthetic", sop_instance_uid=str(ds.SOPInstanceUID),
                           image_shape=(rows, cols), spacing=spacing, projection=proj, analysed=False,
                           not_analysed_reason="lateral projection: the models read frontal images only")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    lungs = np.zeros((rows, cols), bool)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx * cols) / (0.14 * cols)) ** 2 + ((yy - 0.5 * rows) / (0.3 * rows)) ** 2 < 1
    prob = np.zeros((rows, cols), np.float32)
    boxes = []
    for i in range(n_boxes):
        cx = (0.3 if i % 2 == 0 else 0.7) * cols + rng.uniform(-5, 5)
        cy = (0.45 + 0.1 * i) * rows
        r = 0.06 * cols
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r ** 2))).astype(np.float32)
        prob = np.maximum(prob, blob * lungs)
        x0, y0 = float(np.floor(cx - 2 * r)), float(np.floor(cy - 2 * r))
        boxes.append(Box(x0=x0, y0=y0, x1=x0 + float(np.ceil(4 * r)), y1=y0 + float(np.ceil(4 * r)),
                         confidence=round(0.9 - 0.2 * i, 4)))
    ggo = prob > 0.5
    heat = np.exp(-(((xx - 0.7 * cols) ** 2 + (yy - 0.55 * rows) ** 2) / (2 * (0.15 * cols) ** 2)))
    area_px = int(lungs.sum())
    return ChestResult(
        source="synthetic",
        sop_instance_uid=str(ds.SOPInstanceUID),
        image_shape=(rows, cols),
        spacing=spacing,
        projection=proj,
        analysed=True,
        lungs=LungResult(mask=lungs, area_px=area_px,
                         area_mm2=None if spacing is None else area_px * spacing.pixel_area_mm2,
                         spacing_source=None if spacing is None else spacing.source, model=MODEL["lungs"]),
        covid=CovidResult(probability=0.81 if positive else 0.12, positive=positive, threshold=0.5,
                          input_mode="lungs_only", heatmap=heat.astype(np.float32), model=MODEL["covid"]),
        ggo=GgoResult(boxes=boxes, mask=ggo, probability_map=prob if with_probability_map else None,
                      extent_percent=100.0 * float((ggo & lungs).sum()) / area_px if area_px else None,
                      detection_model=MODEL["ggo_detection"], segmentation_model=MODEL["ggo_segmentation"]),
    )
