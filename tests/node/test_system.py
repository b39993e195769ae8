"""The whole chain with real peers and the real pipeline (tiny random bundles), in order:

1. storescu -> node -> ChestPipeline + result writers -> dcmtk storescp in its default configuration
   (uncompressed transfer syntaxes only), which is down at first: the deliveries back off and
   complete once it is up; SEG, SR and SC arrive uncompressed and pass dciodvfy;
2. Orthanc as the PACS: Orthanc sends a study (a radiograph, another system's SR and SEG) to the
   node and the node's SEG, SR and secondary capture arrive back inside the same study; sent
   again with them, nothing new is taken in;
3. SIGKILL of the node while storescu sends 100 images: after a restart nothing acknowledged
   is missing and every study is analysed; SIGTERM then stops node and worker cleanly.

The tests share one running system (see conftest: loading torch is the expensive part).
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.error
from pathlib import Path

import pydicom
import pytest
from nodekit import (
    REPO,
    NodeProcess,
    Orthanc,
    StoreSCP,
    System,
    moved_into_study,
    wait_for,
    which_or_fail,
    write_study,
)

# The running system (serve + a worker process loading the pipeline) and 100-image runs: 6-25 s each.
pytestmark = pytest.mark.slow

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
}


def result_files(storescp: StoreSCP) -> list[Path]:
    return sorted(p for p in storescp.folder.iterdir() if p.is_file())


def received_classes(folder_files: list[Path]) -> dict[str, str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID): str(f) for f in folder_files}


def test_storescu_to_node_results_reach_storescp_after_it_comes_up(
    system: System, dicom_samples: Path
) -> None:
    node = system.node
    storescp = system.storescp
    source = dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm"  # real chest CR, JPEG baseline
    storescu = which_or_fail("storescu")
    out = subprocess.run(
        [storescu, "-aec", "CXRNODE", "-R", "-xy", "127.0.0.1", str(node.port), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr

    # the destination is down: the job completes, the deliveries are retried with backoff
    def retrying() -> bool:
        s = node.status()
        errors = s["errors"]["deliveries"]
        return (
            s["jobs"]["done"] == 1
            and s["deliveries"]["pending"] == 6
            and any(e["attempts"] >= 1 for e in errors)
        )

    wait_for(retrying, 180, what="job done and deliveries retrying")
    status = node.status()
    assert status["deliveries"]["sent"] == 0
    assert {e["destination"] for e in status["errors"]["deliveries"]} <= {"dcmtk", "orthanc"}
    storescp.start()
    wait_for(
        lambda: node.status()["deliveries"]["sent"] == 3,
        60,
        what="deliveries sent after the destination is up",
    )
    got = received_classes(result_files(storescp))
    assert SEG in got and SC in got and SR_CLASSES & set(got), got
    src = pydicom.dcmread(source, stop_before_pixels=True)
    dciodvfy = which_or_fail("dciodvfy")
    for f in result_files(storescp):  # storescp in its default configuration: uncompressed only
        ds = pydicom.dcmread(f)
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        check = subprocess.run([dciodvfy, "-new", str(f)], capture_output=True, text=True, timeout=120)
        lines = (check.stdout + check.stderr).splitlines()
        errors = [ln for ln in lines if ln.lstrip().lower().startswith("error")]
        assert not errors, (f.name, errors)
    status = node.status()
    [study] = [s for s in status["studies"] if s["study_instance_uid"] == src.StudyInstanceUID]
    assert study["results"] == 3 and study["deliveries"] == {"sent": 3, "pending": 3}  # Orthanc still down
    assert study["state"] == "delivering" and study["jobs"] == {"done": 1}

    # receive -> delivered for one image, with the destination up (figure for the README)
    second = dicom_samples / "orthanctests_Monochrome1-Jpeg_CR.dcm"
    before = len(result_files(storescp))
    started = time.monotonic()
    out = subprocess.run(
        [storescu, "-aec", "CXRNODE", "-R", "-xy", "127.0.0.1", str(node.port), str(second)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(result_files(storescp)) >= before + 3, 180, what="second image's results delivered")
    seconds = time.monotonic() - started
    (system.work / "receive_to_delivered.json").write_text(json.dumps({"seconds": seconds}))
    print(f"\nreceive -> delivered (1 image 2446x2010 JPEG, study_stable_seconds=1): {seconds:.1f} s")

    human = node.status_text()
    assert "jobs:" in human and "done 2" in human and src.StudyInstanceUID in human
    assert "recent errors:" in human  # the Orthanc deliveries are still retrying


def _into_study(sample: Path, source: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    moved_into_study(sample, source).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _study_counts(node: NodeProcess, study_uid: str) -> tuple[int, int]:
    """(objects received, result objects) of one study, from ``cxr-node status --json``."""
    study = [s for s in node.status()["studies"] if s["study_instance_uid"] == study_uid]
    assert len(study) == 1, study
    return study[0]["instances"], study[0]["results"]


def _orthanc_store(orthanc: Orthanc, study_id: str) -> object:
    """Orthanc's synchronous store job to the node; an HTTP error names what Orthanc reports."""
    try:
        body = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
        return orthanc.request("POST", "/modalities/cxrnode/store", body, timeout=120)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Orthanc's store job failed: {exc.code} {exc.read()[:300]!r}") from exc


def test_orthanc_sends_a_study_and_gets_the_results_back_in_it(system: System, dicom_samples: Path) -> None:
    """The study holds, beside its radiograph, an SR and a SEG of other systems (a PACS forwards whole
    studies): Orthanc's store job succeeds, the radiograph alone is analysed, and the results arrive
    back inside the same study. Sent again, results included, the job succeeds and nothing new is
    stored or analysed (the node's own objects are acknowledged, not taken in)."""
    which_or_fail("Orthanc")
    node = system.node
    orthanc = system.orthanc
    orthanc.start()
    try:
        source = dicom_samples / "nhsx_nih_cxr_dx_sc.dcm"
        source_header = pydicom.dcmread(source, stop_before_pixels=True)
        uploaded = orthanc.request("POST", "/instances", source.read_bytes())
        assert isinstance(uploaded, dict)
        study_id = uploaded["ParentStudy"]
        for other in ("highdicom_sr_document.dcm", "highdicom_seg_image_cr_binary.dcm"):
            added = orthanc.request("POST", "/instances", _into_study(dicom_samples / other, source_header))
            assert isinstance(added, dict) and added["ParentStudy"] == study_id
        assert _orthanc_store(orthanc, study_id) is not None

        def results_in_orthanc() -> list[dict] | None:
            instances = orthanc.get(f"/studies/{study_id}/instances")
            assert isinstance(instances, list)
            return instances if len(instances) >= 6 else None

        instances = wait_for(results_in_orthanc, 240, interval=1.0, what="results back in Orthanc")
        classes: list[str] = []
        for inst in instances:
            tags = orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            assert isinstance(tags, dict)
            classes.append(tags["SOPClassUID"])
            assert tags["StudyInstanceUID"] == source_header.StudyInstanceUID
        # source (itself a secondary capture) + the other SR and SEG; then one SEG, one SR and one SC
        # heatmap from the node: no "not analysed" report for the SR or the SEG
        assert len(classes) == 6 and classes.count(SEG) == 2 and classes.count(SC) == 2, classes
        assert len([c for c in classes if c in SR_CLASSES]) == 2, classes
        assert _study_counts(node, source_header.StudyInstanceUID) == (3, 3)

        assert _orthanc_store(orthanc, study_id) is not None  # now with the node's results in it
        assert _study_counts(node, source_header.StudyInstanceUID) == (3, 3)
    finally:
        orthanc.stop()
    assert node.proc is not None and node.proc.poll() is None


def test_orthanc_routes_chest_images_with_the_shipped_lua_script(system: System, dicom_samples: Path) -> None:
    """deploy/orthanc/route-chest-to-cxrnode.lua in Orthanc: a CR stored in Orthanc reaches the node
    by itself, is analysed once, and its results come back without being routed again (no loop)."""
    which_or_fail("Orthanc")
    node, orthanc = system.node, system.orthanc
    config = json.loads(orthanc.config.read_text())
    config["LuaScripts"] = [str(REPO / "deploy" / "orthanc" / "route-chest-to-cxrnode.lua")]
    orthanc.config.write_text(json.dumps(config))
    ds = pydicom.dcmread(dicom_samples / "orthanctests_Monochrome1-Jpeg_CR.dcm")
    uids = [pydicom.uid.generate_uid() for _ in range(3)]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    orthanc.start()
    try:
        uploaded = orthanc.request("POST", "/instances", buffer.getvalue())
        assert isinstance(uploaded, dict)
        study_id = uploaded["ParentStudy"]

        def results_in_orthanc() -> list | None:
            instances = orthanc.get(f"/studies/{study_id}/instances")
            assert isinstance(instances, list)
            return instances if len(instances) >= 4 else None

        wait_for(results_in_orthanc, 240, interval=1.0, what="routed, analysed, results back in Orthanc")
        time.sleep(3)  # time for a loop to show, had the results been routed back
        assert len(results_in_orthanc() or []) == 4
        assert _study_counts(node, str(ds.StudyInstanceUID)) == (1, 3)
        study = [s for s in node.status()["studies"] if s["study_instance_uid"] == ds.StudyInstanceUID]
        assert study[0]["jobs"] == {"done": 1}, study
    finally:
        orthanc.stop()


def test_sigkill_while_storescu_sends_100_images_loses_no_acknowledged_instance(system: System) -> None:
    """SIGKILL mid-transfer; after a restart every instance storescu saw acknowledged is in the
    store and the database, and every study reaches done. Then SIGTERM exits cleanly."""
    node = system.node
    work = system.work
    files: list[Path] = []
    for i in range(5):  # 5 studies x 20 small images
        files += write_study(work / "kill" / f"s{i}", 20, accession=f"K{i}")
    storescu = which_or_fail("storescu")
    proc = subprocess.Popen(
        [storescu, "-v", "-aec", "CXRNODE", "127.0.0.1", str(node.port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    acked: list[Path] = []
    current: Path | None = None
    killed = False
    assert proc.stdout is not None
    for line in proc.stdout:  # storescu -v: "Sending file: X" ... "Received Store Response (Success)"
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            if len(acked) >= 20 and not killed:
                node.kill()
                killed = True
    proc.wait(60)
    assert killed and 20 <= len(acked) < 100, f"{len(acked)} acknowledged"

    # restart on the same data folder; the worker process kept running and does the analysis
    # (a serve restart with its own worker would import torch again: ~20-40 s here)
    node.start("--workers", "0")
    from node.config import load_config
    from node.service import open_repository, open_store

    config = load_config(node.config_path)
    repo, store = open_repository(config), open_store(config)
    studies = set()
    for path in acked:
        src = pydicom.dcmread(path)
        record = repo.find_instance(src.SOPInstanceUID)
        assert record is not None, f"acknowledged {path.name} is not in the database"
        stored = pydicom.dcmread(store.path(record.path))
        assert stored.PixelData == src.PixelData
        studies.add(str(src.StudyInstanceUID))

    def all_done() -> bool:
        status = repo.status(max_studies=1000)
        mine = [s for s in status["studies"] if s["study_instance_uid"] in studies]
        return len(mine) == len(studies) and all(
            s["unscheduled"] == 0 and set(s["jobs"]) == {"done"} for s in mine
        )

    wait_for(all_done, 240, interval=1.0, what="every study of the acknowledged instances done")

    # a job's results share one series per object type (20 images: not 20 SR series)
    from sqlalchemy import select

    from node.db import Instance

    with repo.engine.connect() as conn:
        derived = conn.execute(
            select(Instance.study_instance_uid, Instance.series_instance_uid, Instance.sop_class_uid)
            .where(Instance.derived.is_(True), Instance.study_instance_uid.in_(studies))
        ).all()
    studies_status = repo.status(max_studies=1000)["studies"]
    jobs = {s["study_instance_uid"]: sum(s["jobs"].values()) for s in studies_status}
    for study in studies:
        sr_series = {row.series_instance_uid for row in derived
                     if row.study_instance_uid == study and row.sop_class_uid in SR_CLASSES}
        assert 1 <= len(sr_series) <= jobs[study], (study, len(sr_series), jobs[study])
    repo.engine.dispose()
    assert node.terminate(timeout=60) == 0, node.log()[-2000:]  # SIGTERM: clean, prompt exit
    assert "node.stopped" in node.log()
    assert system.worker.terminate(timeout=60) == 0
    # logs carry UIDs and accession numbers, never the patient's name or birth date
    logs = node.log() + system.worker.log_path.read_text(errors="replace")
    assert "job.done" in logs and "accession=K0" in logs
    assert "Synthetic" not in logs and "19700101" not in logs
