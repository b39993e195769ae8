"""Miniature copies of the public datasets in their published layouts (file names, CSV columns,
DICOM vs PNG), generated on the fly: a few tiny images each, so adapters are tested without the
real downloads. Each ``make_*`` returns the dataset folder; ``EXPECTED`` gives the rows an
adapter must produce from it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def png(path: Path, seed: int, size: tuple[int, int] = (24, 20), bits16: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if bits16:
        Image.fromarray(rng.integers(0, 65535, size=size[::-1], dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, size=size[::-1], dtype=np.uint8)).save(path)
    return path


def dicom(
    path: Path, *, patient_id: str, study_uid: str, view: str = "PA", modality: str = "CR", seed: int = 0
) -> Path:
    """A tiny uncompressed DICOM radiograph (or another modality) with the header fields adapters read."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, study_uid, generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = modality, view, "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 16, 16, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_bimcv(root: Path, sign: str) -> Path:
    subjects = ["sub-S0001", "sub-S0002"]
    write_csv(
        root / "participants.tsv", ["participant", "modality_dicom"], [[s, "['CR']"] for s in subjects], "\t"
    )
    images = [
        ("sub-S0001", "ses-E0001", "pa", "cr"),
        ("sub-S0001", "ses-E0001", "ll", "cr"),
        ("sub-S0002", "ses-E0002", "ap", "dx"),
    ]
    for i, (sub, ses, vp, mod) in enumerate(images):
        stem = f"{sub}_{ses}_run-1_bp-chest_vp-{vp}_{mod}"
        png(root / sub / ses / "mod-rx" / f"{stem}.png", i)
        (root / sub / ses / "mod-rx" / f"{stem}.json").write_text(
            json.dumps({"00185101": {"vr": "CS", "Value": [vp.upper()]}})
        )
    write_csv(
        root / "derivatives" / "labels" / f"labels_covid19_{sign}.tsv",
        ["ReportID", "Labels"],
        [["ses-E0001", "['pneumonia', 'COVID 19']"], ["ses-E0002", "['normal']"]],
        "\t",
    )
    return root


def make_brixia(root: Path) -> Path:
    names = ["1001.dcm", "1002.dcm"]
    for i, n in enumerate(names):
        dicom(root / "dicom_clean" / n, patient_id=f"P{i}", study_uid=f"1.2.3.{i}", view="AP", seed=i)
    write_csv(
        root / "metadata_global_v2.csv",
        ["Filename", "StudyId", "Subject", "Sex", "ConsensusTestset", "BrixiaScore", "BrixiaScoreGlobal"],
        [
            ["1001.dcm", "S1", "11", "M", "0", "012321", "9"],
            ["1002.dcm", "S2", "11", "M", "0", "000000", "0"],
        ],
        delimiter=";",
    )
    return root


def make_hannover(root: Path) -> Path:
    write_csv(
        root / "data.csv",
        ["patient_id", "image_id", "sex", "age", "modality", "projection"],
        [
            ["042f06a9", "b343e657", "m", "", "CR", "ap"],
            ["042f06a9", "c9280a30", "m", "", "CR", "ap"],
            ["0f2b9fbd", "5f619d7e", "m", "", "DX", "pa"],
        ],
    )
    for i, image_id in enumerate(["b343e657", "c9280a30", "5f619d7e"]):
        png(root / "png" / f"{image_id}.png", i)
    return root


def make_tcia(root: Path) -> Path:
    coll = root / "COVID-19-AR"
    dicom(
        coll / "COVID-19-AR-16406488" / "01-01-2012-CHEST-12345" / "1.000000-AP-11111" / "1-1.dcm",
        patient_id="COVID-19-AR-16406488",
        study_uid="1.2.1",
        view="AP",
    )
    dicom(
        coll / "COVID-19-AR-16406488" / "01-02-2012-CHEST-12346" / "1.000000-AP-11112" / "1-1.dcm",
        patient_id="COVID-19-AR-16406488",
        study_uid="1.2.2",
        view="AP",
        seed=1,
    )
    dicom(
        coll / "COVID-19-AR-16406502" / "01-01-2012-CT-1" / "2.000000-AXIAL-2" / "1-1.dcm",
        patient_id="COVID-19-AR-16406502",
        study_uid="1.2.3",
        view="",
        modality="CT",
    )
    write_csv(
        root / "metadata.csv",
        ["Series UID", "Collection", "Subject ID", "Study UID", "Modality", "File Location"],
        [["1.1", "COVID-19-AR", "COVID-19-AR-16406488", "1.2.1", "CR", "./COVID-19-AR/..."]],
    )
    return root


def make_hm(root: Path) -> Path:
    write_csv(
        root / "COVID_DSL_01.CSV",
        ["PATIENT ID", "EDAD/AGE", "DIAG ING/INPAT"],
        [["1001", "70", "COVID19 - POSITIVO"], ["1002", "55", "COVID19 - PENDIENTE"]],
        delimiter=";",
    )
    dicom(root / "IMAGES" / "1001" / "study1" / "img1.dcm", patient_id="1001", study_uid="9.1", view="PA")
    dicom(
        root / "IMAGES" / "1002" / "study1" / "img1.dcm",
        patient_id="1002",
        study_uid="9.2",
        view="LL",
        seed=2,
    )
    return root


def make_ieee8023(root: Path) -> Path:
    header = [
        "patientid",
        "offset",
        "sex",
        "age",
        "finding",
        "RT_PCR_positive",
        "survival",
        "view",
        "modality",
        "date",
        "location",
        "folder",
        "filename",
        "doi",
        "url",
        "license",
        "clinical_notes",
        "other_notes",
    ]
    rows = [
        [
            "2",
            "0",
            "M",
            "65",
            "Pneumonia/Viral/COVID-19",
            "Y",
            "Y",
            "PA",
            "X-ray",
            "",
            "",
            "images",
            "a.jpg",
            "",
            "",
            "CC BY",
            "",
            "",
        ],
        [
            "3",
            "",
            "F",
            "50",
            "Pneumonia/Bacterial/Streptococcus",
            "",
            "",
            "L",
            "X-ray",
            "",
            "",
            "images",
            "b.png",
            "",
            "",
            "",
            "",
            "",
        ],
        [
            "4",
            "",
            "F",
            "50",
            "todo",
            "",
            "",
            "AP Supine",
            "X-ray",
            "",
            "",
            "images",
            "c.png",
            "",
            "",
            "",
            "",
            "",
        ],
        [
            "5",
            "",
            "M",
            "40",
            "Pneumonia/Viral/COVID-19",
            "",
            "",
            "Axial",
            "CT",
            "",
            "",
            "volumes",
            "d.nii.gz",
            "",
            "",
            "",
            "",
            "",
        ],
    ]
    write_csv(root / "metadata.csv", header, rows)
    for i, n in enumerate(["a.jpg", "b.png", "c.png"]):
        png(root / "images" / n, i)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    return root


def make_padchest(root: Path) -> Path:
    header = [
        "ImageID",
        "ImageDir",
        "StudyDate_DICOM",
        "StudyID",
        "PatientID",
        "PatientBirth",
        "PatientSex_DICOM",
        "ViewPosition_DICOM",
        "Projection",
        "MethodProjection",
        "Labels",
        "Localizations",
    ]
    rows = [
        [
            "i1.png",
            "0",
            "20150101",
            "st1",
            "pat1",
            "1950",
            "M",
            "POSTEROANTERIOR",
            "PA",
            "Manual",
            "['pneumonia', 'infiltrates']",
            "[]",
        ],
        ["i2.png", "0", "20150101", "st1", "pat1", "1950", "M", "LATERAL", "L", "Manual", "['normal']", "[]"],
        ["i3.png", "1", "20160101", "st2", "pat2", "1960", "F", "", "COSTAL", "Manual", "['normal']", "[]"],
    ]
    write_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", header, rows)
    png(root / "0" / "i1.png", 0, bits16=True)
    png(root / "0" / "i2.png", 1, bits16=True)
    png(root / "1" / "i3.png", 2, bits16=True)
    return root


CHEXPERT_OBS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]


def make_chexpert(root: Path) -> Path:
    folder = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT_OBS

    def obs(**values: str) -> list[str]:
        return [values.get(o.replace(" ", "_"), "") for o in CHEXPERT_OBS]

    write_csv(
        folder / "train.csv",
        header,
        [
            [
                "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
                "Female",
                "68",
                "Frontal",
                "AP",
            ]
            + obs(Pneumonia="1.0", Edema="-1.0"),
            ["CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Female", "68", "Lateral", ""]
            + obs(No_Finding="1.0"),
        ],
    )
    write_csv(
        folder / "valid.csv",
        header,
        [
            ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "PA"]
            + obs(Cardiomegaly="1.0")
        ],
    )
    png(folder / "train" / "patient00001" / "study1" / "view1_frontal.jpg", 0)
    png(folder / "train" / "patient00001" / "study1" / "view2_lateral.jpg", 1)
    png(folder / "valid" / "patient64541" / "study1" / "view1_frontal.jpg", 2)
    return folder


def make_rsna(root: Path) -> Path:
    ids = ["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00436515-870c-4b36-a041-de91049b9ab4"]
    write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [
            [ids[0], "", "", "", "", "0"],
            [ids[1], "264.0", "152.0", "213.0", "379.0", "1"],
            [ids[1], "562.0", "152.0", "256.0", "453.0", "1"],
        ],
    )
    write_csv(
        root / "stage_2_detailed_class_info.csv",
        ["patientId", "class"],
        [[ids[0], "No Lung Opacity / Not Normal"], [ids[1], "Lung Opacity"], [ids[1], "Lung Opacity"]],
    )
    for i, pid in enumerate(ids):
        dicom(
            root / "stage_2_train_images" / f"{pid}.dcm",
            patient_id=pid,
            study_uid=f"7.{i}",
            view="PA",
            seed=i,
        )
    return root


def make_kermany(root: Path) -> Path:
    base = root / "chest_xray"
    for i, rel in enumerate(
        [
            "train/NORMAL/IM-0115-0001.jpeg",
            "train/NORMAL/NORMAL2-IM-0115-0002.jpeg",
            "train/PNEUMONIA/person1_bacteria_1.jpeg",
            "train/PNEUMONIA/person1_virus_6.jpeg",
            "val/NORMAL/IM-0200-0001.jpeg",
            "val/PNEUMONIA/person1946_bacteria_4874.jpeg",
            "test/NORMAL/IM-0001-0001.jpeg",
            "test/PNEUMONIA/person100_bacteria_475.jpeg",
        ]
    ):
        png(base / rel, i)
    return root


# adapter -> (maker, expected number of rows)
EXPECTED = {
    "bimcv_covid_pos": (lambda r: make_bimcv(r, "posi"), 3),
    "bimcv_covid_neg": (lambda r: make_bimcv(r, "neg"), 3),
    "brixia": (make_brixia, 2),
    "hannover": (make_hannover, 3),
    "tcia_covid": (make_tcia, 2),
    "hm_hospitales": (make_hm, 2),
    "ieee8023": (make_ieee8023, 3),
    "padchest": (make_padchest, 2),
    "chexpert": (make_chexpert, 3),
    "rsna_pneumonia": (make_rsna, 2),
    "kermany_pneumonia": (make_kermany, 8),
}
