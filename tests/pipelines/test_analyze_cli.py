"""``cxr-node analyze`` on a folder with good and bad files (random bundles, real images)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.cli.main import main
from pipelines.overlays import BANNER_RGB, LUNG_RGB

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def input_folder(tmp_path: Path, chest_dicom: Path, chest_png: Path, dicom_samples: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(chest_dicom, folder / "chest.dcm")
    shutil.copy(chest_png, folder / "sub" / "chest.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a PNG body")
    shutil.copy(dicom_samples / "highdicom_sr_document.dcm", folder / "report.dcm")
    (folder / "notes.txt").write_text("ignored: neither DICOM nor an image")
    return folder


def test_folder_with_bad_files(input_folder: Path, tmp_path: Path, random_models: Path, state_dir: Path,
                               chest_dicom: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = input_folder / "results"  # inside the input: a rerun must not pick up its own outputs
    # a media directory is skipped, not reported as an unreadable image
    (input_folder / "DICOMDIR").write_bytes((input_folder / "report.dcm").read_bytes())
    status = main(["analyze", str(input_folder), "--out", str(out), "--json", "--models", str(random_models),
                   "--device", "cpu", "--state-dir", str(state_dir), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert status == 1  # two inputs failed, the others were analysed
    lines = [json.loads(line) for line in captured.out.splitlines()]
    by_source = {Path(line["source"]).name: line for line in lines}
    assert set(by_source) == {"chest.dcm", "chest.png", "broken.png", "report.dcm"}
    assert "not a readable image" in by_source["broken.png"]["error"]
    assert "not a radiograph" in by_source["report.dcm"]["error"]
    assert f"error: {input_folder / 'broken.png'}:" in captured.err
    assert f"error: {input_folder / 'report.dcm'}:" in captured.err
    assert "4/4" in captured.err  # the progress bar, on stderr, for more than 3 images

    dicom = by_source["chest.dcm"]
    assert dicom["sop_instance_uid"] == pydicom.dcmread(chest_dicom, stop_before_pixels=True).SOPInstanceUID
    assert dicom["analysed"] and dicom["projection"] == "frontal" and dicom["lung_area_mm2"] > 0
    written = [pydicom.dcmread(p) for p in dicom["outputs"]]
    classes = sorted(str(ds.SOPClassUID) for ds in written)
    assert SEG in classes and SC in classes
    assert any(c.startswith("1.2.840.10008.5.1.4.1.1.88.") for c in classes)  # an SR
    assert all(Path(p).parent == out / "chest" for p in dicom["outputs"])

    png = by_source["chest.png"]
    assert png["sop_instance_uid"] is None and png["lung_area_mm2"] is None and png["lung_area_px"] > 0
    names = sorted(Path(p).name for p in png["outputs"])
    assert names == ["ggo_mask.png", "heatmap.png", "lungs_mask.png", "overlay.png"]
    folder = Path(png["outputs"][0]).parent
    assert folder == out / "chest-2"  # same stem as chest.dcm: a second folder, nothing overwritten
    source_size = Image.open(input_folder / "sub" / "chest.png").size
    lungs = np.asarray(Image.open(folder / "lungs_mask.png"))
    assert lungs.shape == source_size[::-1] and int((lungs == 255).sum()) == png["lung_area_px"]
    # overlay.png is the secondary capture's picture: same renderer, banner and lung contour colours
    overlay = np.asarray(Image.open(folder / "overlay.png"))
    assert overlay.shape == (*source_size[::-1], 3)
    top = overlay[: overlay.shape[0] // 10].astype(int)
    assert (np.abs(top - BANNER_RGB).max(axis=-1) < 60).sum() > 20  # anti-aliased banner text
    assert np.all(overlay == LUNG_RGB, axis=-1).any()  # contour (random models here) or legend swatch
    assert {"decode", "write", "total"} <= set(png["timings_ms"])

    status = main(["analyze", str(input_folder), "--out", str(out), "--json", "--models", str(random_models),
                   "--device", "cpu", "--state-dir", str(state_dir)])
    rerun = [json.loads(line)["source"] for line in capsys.readouterr().out.splitlines()]
    assert status == 1 and sorted(Path(p).name for p in rerun) == sorted(by_source)


def test_plain_summary_and_unusable_models(
    tmp_path: Path, chest_png: Path, random_models: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["analyze", str(chest_png), "--out", str(tmp_path / "o"), "--models", str(random_models),
                   "--device", "cpu", "--state-dir", str(state_dir)])
    captured = capsys.readouterr()
    assert status == 0
    assert captured.out.startswith(f"{chest_png}: frontal (") and "COVID-19" in captured.out
    assert "image/s" not in captured.err  # one image: no progress bar

    status = main(["analyze", str(chest_png), "--out", str(tmp_path / "o2"),
                   "--models", str(tmp_path / "none")])
    assert status == 2
    err = capsys.readouterr().err
    assert f"cannot load the models from {(tmp_path / 'none').resolve()}: " in err
    assert "models folder not found" in err


def test_header_gates_and_their_switches(tmp_path: Path, chest_dicom: Path, random_models: Path,
                                         state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = pydicom.dcmread(chest_dicom)
    ds.ViewPosition, ds.BodyPartExamined = "LL", "CHEST"
    ds.save_as(tmp_path / "ll.dcm")
    ds.ViewPosition, ds.BodyPartExamined = "PA", "KNEE"
    ds.save_as(tmp_path / "knee.dcm")
    common = ["--json", "--models", str(random_models), "--device", "cpu", "--state-dir", str(state_dir)]

    def records(*extra: str) -> dict[str, dict]:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        assert main(["analyze", str(tmp_path / "ll.dcm"), str(tmp_path / "knee.dcm"), "--out",
                     str(tmp_path / "out"), *common, *extra]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return {Path(line["source"]).name: line for line in lines}

    gated = records()
    assert not gated["ll.dcm"]["analysed"] and gated["ll.dcm"]["view_position"] == "LL"
    knee = gated["knee.dcm"]
    assert not knee["analysed"] and "Body Part Examined KNEE" in knee["not_analysed_reason"]
    open_ = records("--ignore-view-position", "--ignore-body-part")
    assert open_["ll.dcm"]["analysed"] and open_["knee.dcm"]["analysed"]
    assert any("View Position check off" in w for w in open_["ll.dcm"]["warnings"])


def test_the_lung_field_gate_and_its_switch(tmp_path: Path, chest_png: Path, random_models: Path,
                                            state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    shutil.copytree(random_models, models)
    path = models / "random-lungs" / "configs" / "metadata.json"  # its mask: one field across the image
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "lateral_field": {"min_width": 0.45, "max_second": 0.4}}))
    common = [str(chest_png), "--json", "--models", str(models), "--device", "cpu",
              "--state-dir", str(state_dir)]

    assert main(["analyze", *common, "--out", str(tmp_path / "gated")]) == 0
    gated = json.loads(capsys.readouterr().out)
    assert not gated["analysed"] and "shape of the lung mask" in gated["not_analysed_reason"]
    assert main(["analyze", *common, "--out", str(tmp_path / "open"), "--ignore-lung-field"]) == 0
    open_ = json.loads(capsys.readouterr().out)
    assert open_["analysed"] and any("lung-field check off" in w for w in open_["warnings"])


def test_a_writer_error_quoting_the_patient_is_redacted(
    tmp_path: Path, chest_dicom: Path, random_models: Path, state_dir: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.results

    ds = pydicom.dcmread(chest_dicom)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Qzxname^Hidden", "PIDQZ777", "19010101"
    source = tmp_path / "phi.dcm"
    ds.save_as(source)

    def refuse(source_ds: pydicom.Dataset, *_args: object, **_kwargs: object) -> list:
        raise ValueError(f"Unable to convert '{source_ds.PatientBirthDate}' for {source_ds.PatientName} "
                         f"({source_ds.PatientID})\nforged line")

    monkeypatch.setattr(node.results, "build_result_objects", refuse)
    status = main(["analyze", str(source), "--out", str(tmp_path / "o"), "--json",
                   "--models", str(random_models), "--device", "cpu", "--state-dir", str(state_dir)])
    captured = capsys.readouterr()
    assert status == 1
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["error"].startswith("cannot write the result objects: ValueError: Unable to convert")
    everything = (captured.out + captured.err).lower()
    assert "[redacted]" in everything
    for value in ("qzxname", "hidden", "pidqz777", "19010101"):
        assert value not in everything, value
    assert "\nforged line" not in captured.err
