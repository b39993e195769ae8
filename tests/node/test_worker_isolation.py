"""Per-image isolation in the worker: one bad instance fails alone, deterministically, without PHI.

A study holds a real chest CR (from the shared DICOM samples) and crafted instances written to the
store as a peer could have sent them: sequences nested thousands of levels deep, garbage JPEG
fragments, BitsAllocated 12, a photometric interpretation that contradicts Samples per Pixel. The
real pipeline (random bundles) runs on all of them: the chest image gets its results, each bad one
fails with its reason in the job's note and in ``cxr-node status``, the job is done at its first
attempt and is not retried. A study of bad images only fails at once. A store I/O fault is retried.
The crafted instances carry distinctive patient names, IDs and birth dates: none of them may appear
in a log line, a job error or the status output.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from nodekit import make_dx, node_toml
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from node.cli.main import main as cli_main
from node.config import NodeConfig, load_config
from node.errors import DatabaseError, StoreError, parse_image_failures
from node.ingest import file_meta_bytes
from node.logs import log_event, setup_logging
from node.repository import ClaimedJob, InstanceRecord, Repository
from node.service import open_repository, open_store
from node.store import InstanceStore
from node.worker import AnalysisStageError, Worker, chest_analyzer_factory, load_models

PHI = {"PatientName": "Zyqxname^Secretfirst", "PatientID": "PIDQX42424242", "PatientBirthDate": "1901-01-01"}
PHI_STRINGS = ("Zyqxname", "Secretfirst", "PIDQX42424242", "1901-01-01", "19010101")


# -- crafted instances ------------------------------------------------------------------------
def _element(group: int, elem: int, vr: bytes, value: bytes, undefined: bool = False) -> bytes:
    head = struct.pack("<HH", group, elem) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", 0xFFFFFFFF if undefined else len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _item(value: bytes, undefined: bool = False) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF if undefined else len(value)) + value


ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _nested(depth: int) -> bytes:
    """(0040,A730) Content Sequence nested ``depth`` levels, every length undefined."""
    opening = (_element(0x0040, 0xA730, b"SQ", b"", undefined=True)
               + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    return opening * depth + (ITEM_END + SEQ_END) * depth


def _header(study: str, series: str, phi: dict[str, str], **attrs: object) -> pydicom.Dataset:
    ds = make_dx(study, series, rows=64, cols=64)
    del ds.PixelData
    for key, value in {**phi, **attrs}.items():
        setattr(ds, key, value)
    return ds


def _body(ds: pydicom.Dataset, tail: bytes = b"") -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue() + tail


def _pixels(ds: pydicom.Dataset, data: bytes) -> bytes:
    return _element(0x7FE0, 0x0010, b"OB", data + (b"\0" if len(data) % 2 else b""))


def crafted(study: str, series: str) -> dict[str, tuple[pydicom.Dataset, bytes, str]]:
    """name -> (header dataset, data set bytes, transfer syntax) of each bad instance."""
    out = {}
    raw_phi = {**PHI, "PatientBirthDate": "19010101"}  # a valid DA elsewhere: both spellings are known
    deep = _header(study, series, PHI)
    deep_body = _body(deep, _nested(3000) + _pixels(deep, bytes(64 * 64 * 2)))
    out["deep"] = (deep, deep_body, ExplicitVRLittleEndian)
    jpeg = _header(study, series, raw_phi, BitsAllocated=8, BitsStored=8, HighBit=7)
    fragments = (_element(0x7FE0, 0x0010, b"OB", b"", undefined=True) + _item(b"")
                 + _item(b"\xff\xd8\xff\xe0garbage-not-a-jpeg-stream" * 20) + SEQ_END)
    out["jpeg"] = (jpeg, _body(jpeg, fragments), JPEGBaseline8Bit)
    bits12 = _header(study, series, PHI, BitsAllocated=12, BitsStored=12, HighBit=11)
    out["bits12"] = (bits12, _body(bits12, _pixels(bits12, bytes(64 * 64 * 3 // 2))), ExplicitVRLittleEndian)
    rgb = _header(study, series, PHI, PhotometricInterpretation="RGB", SamplesPerPixel=1, BitsAllocated=8,
                  BitsStored=8, HighBit=7)
    out["photometric"] = (rgb, _body(rgb, _pixels(rgb, bytes(64 * 64))), ExplicitVRLittleEndian)
    return out


def _store(repo: Repository, store: InstanceStore, items: list[tuple[pydicom.Dataset, bytes, str]]) -> None:
    records = []
    for ds, body, ts in items:
        meta = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ts, "TESTSCU")
        relpath, _ = store.write(ds.SOPInstanceUID, meta, body)
        records.append(InstanceRecord(
            sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
            study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
            transfer_syntax_uid=ts, path=relpath, size_bytes=len(meta) + len(body),
            received_at=time.time() - 3600))
    repo.record_instances(records)


def _real_chest(dicom_samples: Path, study: str, series: str) -> tuple[pydicom.Dataset, bytes, str]:
    ds = pydicom.dcmread(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
    return ds, _body(ds), str(ds.file_meta.TransferSyntaxUID)


# -- the node parts ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[NodeConfig, Repository,
                                                                                InstanceStore, Worker]:
    root = tmp_path_factory.mktemp("isolation")
    (root / "node.toml").write_text(node_toml(root / "var", 0, models_dir=models_dir))
    config = load_config(root / "node.toml")
    repo, store = open_repository(config), open_store(config)
    analyzer = load_models(config, chest_analyzer_factory(config), threading.Event())
    worker = Worker(config, repo, store, lambda: analyzer, owner="test:isolation", stop=threading.Event())
    worker.analyzer = analyzer
    return config, repo, store, worker


class _DecodeOnly:
    """The pipeline's real decoder (pipelines.image.load_dicom) without the models: fast."""

    def analyze(self, source: pydicom.Dataset, **_kwargs: object) -> list:
        from pipelines.image import load_dicom

        load_dicom(source)
        return []


@pytest.fixture
def light(tmp_path: Path) -> tuple[Repository, InstanceStore, Worker]:
    (tmp_path / "node.toml").write_text(node_toml(tmp_path / "var", 0))
    config = load_config(tmp_path / "node.toml")
    repo, store = open_repository(config), open_store(config)
    worker = Worker(config, repo, store, _DecodeOnly, owner="test:light", stop=threading.Event())
    worker.analyzer = _DecodeOnly()
    return repo, store, worker


def _run_one(repo: Repository, worker: Worker) -> tuple[ClaimedJob, str]:
    repo.schedule_stable_studies(time.time(), stable_seconds=1)
    job = repo.claim_job(worker.owner, 60, worker.config.worker.max_attempts)
    assert job is not None
    return job, worker.process(job)


def _job_row(repo: Repository, job_id: int) -> dict:
    from sqlalchemy import select

    from node.db import Job

    with repo.engine.connect() as conn:
        return dict(conn.execute(select(Job.__table__).where(Job.__table__.c.id == job_id)).one()._mapping)


COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
NOT_ANALYSED = "Image not analysed by the AI"
PIXELMED = ["java", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0", "-cp", "/usr/share/java/pixelmed.jar",
            "com.pixelmed.validate.DicomSRValidator"]
# pixelmed's CID 100 check of Procedure Reported (accepted in tests/results/test_validators.py, see there)
PIXELMED_ACCEPTED = 'Code (399208008,SCT,"Plain chest X-ray") not found in context group 100'


def _derived(repo: Repository, job_id: int) -> list:
    from sqlalchemy import select

    from node.db import Instance

    i = Instance.__table__.c
    with repo.engine.connect() as conn:
        return list(conn.execute(select(i.sop_instance_uid, i.sop_class_uid, i.path)
                                 .where(i.derived.is_(True), i.job_id == job_id)).all())


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR content tree."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found += _texts(item)
    return found


def _reports(repo: Repository, store: InstanceStore, job_id: int) -> dict[str, tuple[Path, pydicom.Dataset]]:
    """The job's "not analysed" SRs, by the SOP Instance UID of the image each one reports on."""
    found = {}
    for row in _derived(repo, job_id):
        if row.sop_class_uid != COMPREHENSIVE_3D_SR:
            continue
        path = store.path(row.path)
        ds = pydicom.dcmread(path)
        if any(NOT_ANALYSED in t for t in _texts(ds)):
            [evidence] = ds.CurrentRequestedProcedureEvidenceSequence
            [series] = evidence.ReferencedSeriesSequence
            [image] = series.ReferencedSOPSequence
            found[str(image.ReferencedSOPInstanceUID)] = (path, ds)
    return found


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.lower().startswith("error")]


def _assert_store_matches_db(repo: Repository, store: InstanceStore) -> None:
    """Every file in the store has its row and every row its file: no orphan either way."""
    from sqlalchemy import select

    from node.db import Instance

    files = {str(p.relative_to(store.root)) for p in store.root.glob("*/*.dcm")}
    with repo.engine.connect() as conn:
        rows = {r.path for r in conn.execute(select(Instance.__table__.c.path))}
    assert files == rows, (sorted(files - rows), sorted(rows - files))


@pytest.mark.slow
def test_one_bad_instance_fails_alone_and_is_not_retried(
    node: tuple, dicom_samples: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config, repo, store, worker = node
    setup_logging("INFO", "text")
    study, series = generate_uid(), generate_uid()
    bad = crafted(study, series)
    chest = _real_chest(dicom_samples, study, series)
    _store(repo, store, [chest, *bad.values()])
    capfd.readouterr()  # what the test itself printed while crafting (pydicom warns about its values)
    job, state = _run_one(repo, worker)
    row = _job_row(repo, job.id)
    assert state == "done" and row["state"] == "done" and row["attempts"] == 1, row
    failed = {f["sop_instance_uid"]: f for f in parse_image_failures(row["error"])}
    uids = {name: ds.SOPInstanceUID for name, (ds, _b, _t) in bad.items()}
    assert set(failed) == set(uids.values()), row["error"]
    assert failed[uids["deep"]]["stage"] == "read" and "RecursionError" in failed[uids["deep"]]["reason"]
    for name in ("jpeg", "bits12", "photometric"):
        assert failed[uids[name]]["stage"] == "decode", failed[uids[name]]
    from sqlalchemy import select

    from node.db import Instance

    i = Instance.__table__.c
    with repo.engine.connect() as conn:
        results = conn.execute(select(i.sop_class_uid).where(i.derived.is_(True), i.job_id == job.id)).all()
    assert any(r.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88.") for r in results)  # the chest's SR
    assert repo.claim_job(worker.owner, 60, config.worker.max_attempts) is None  # nothing queued again

    # each bad image has its "not analysed" SR beside the chest's results: same SR series, numbered by
    # the image's place in the study, saying why; valid for dciodvfy and pixelmed's TID 1500 validator
    reports = _reports(repo, store, job.id)
    assert set(reports) == set(uids.values())
    srs = [pydicom.dcmread(store.path(r.path)) for r in _derived(repo, job.id)
           if r.sop_class_uid == COMPREHENSIVE_3D_SR]
    assert len(srs) == 5 and len({ds.SeriesInstanceUID for ds in srs}) == 1
    assert sorted(int(ds.InstanceNumber) for ds in srs) == [1, 2, 3, 4, 5]
    for uid, (path, ds) in reports.items():
        [text] = [t for t in _texts(ds) if NOT_ANALYSED in t]
        assert failed[uid]["reason"] in text and ds.PatientID == PHI["PatientID"], text
        assert _dciodvfy_errors(path) == [], (uid, path)
    proc = subprocess.run([*PIXELMED, str(reports[uids["deep"]][0])], capture_output=True, text=True,
                          timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert "Found Root Template TID_1500 (MeasurementReport)" in output, output[-2000:]
    assert "IOD validation complete" in output, output[-2000:]
    errors = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert [e for e in errors if PIXELMED_ACCEPTED not in e] == [], errors
    _assert_store_matches_db(repo, store)

    assert cli_main(["status", "--json", "--config", str(config.source)]) == 0
    out, err = capfd.readouterr()
    status = json.loads(out.strip().splitlines()[-1])
    [entry] = [e for e in status["errors"]["jobs"] if e["job_id"] == job.id]
    assert {i["sop_instance_uid"] for i in entry["images"]} == set(uids.values())
    assert cli_main(["status", "--config", str(config.source)]) == 0
    human, err2 = capfd.readouterr()
    assert "4 image(s) not analysed" in human and f"image {uids['bits12']} (decode)" in human
    assert f"{study:<64}" in human and "  (4 image(s) not analysed)" in human  # the study's line too
    everything = "\n".join([out, err, human, err2, row["error"] or ""])
    for value in PHI_STRINGS:
        assert value.lower() not in everything.lower(), value
    assert all(line[:4].isdigit() for line in err.splitlines() if line)  # one line per record, tracebacks too


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[InstanceRecord]:
    """The result records the worker writes (node.ingest.commit.store_result, as the worker calls it)."""
    import node.worker

    written: list[InstanceRecord] = []

    def store_result(*args: object, **kwargs: object) -> InstanceRecord:
        record = real(*args, **kwargs)
        written.append(record)
        return record

    real = node.worker.store_result
    monkeypatch.setattr(node.worker, "store_result", store_result)
    return written


def _retry(repo: Repository, worker: Worker, job: ClaimedJob) -> str:
    """Claim the queued job again past its backoff, and run it."""
    claim = repo.claim_job(worker.owner, 60, worker.config.worker.max_attempts, now=time.time() + 600)
    assert claim is not None and claim.id == job.id
    return worker.process(claim)


@pytest.mark.slow
def test_result_files_go_when_their_rows_cannot_be_committed(
    node: tuple, dicom_samples: Path, recorded: list[InstanceRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails at the step that records the results with the job (after SEG, SR and SC were
    written): their files are removed, the job is queued again, and the retry records new ones."""
    _config, repo, store, worker = node
    study = generate_uid()
    _store(repo, store, [_real_chest(dicom_samples, study, generate_uid())])

    def finish_job(*_args: object, **_kwargs: object) -> bool:
        raise DatabaseError("database write failed: OperationalError: injected")

    monkeypatch.setattr(repo, "finish_job", finish_job)
    job, state = _run_one(repo, worker)
    assert state == "queued" and "injected" in _job_row(repo, job.id)["error"]
    assert len(recorded) == 3 and not any(store.path(r.path).exists() for r in recorded)
    _assert_store_matches_db(repo, store)

    monkeypatch.undo()
    assert _retry(repo, worker, job) == "done"
    classes = sorted(r.sop_class_uid for r in _derived(repo, job.id))
    assert len(classes) == 3 and "1.2.840.10008.5.1.4.1.1.66.4" in classes and COMPREHENSIVE_3D_SR in classes
    _assert_store_matches_db(repo, store)


@pytest.mark.slow
def test_result_files_stay_when_a_failed_commit_went_through(
    node: tuple, dicom_samples: Path, recorded: list[InstanceRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that reports a failure but did commit (connection lost during COMMIT): the database is
    asked, and files whose rows exist stay, so no row ever names a missing file."""
    _config, repo, store, worker = node
    _store(repo, store, [_real_chest(dicom_samples, generate_uid(), generate_uid())])
    real_finish = repo.finish_job

    def finish_job(*args: object, **kwargs: object) -> bool:
        real_finish(*args, **kwargs)
        raise DatabaseError("database write failed: connection lost during COMMIT")

    monkeypatch.setattr(repo, "finish_job", finish_job)
    job, _state = _run_one(repo, worker)
    assert _job_row(repo, job.id)["state"] == "done"
    assert len(recorded) == 3 and all(store.path(r.path).is_file() for r in recorded)
    assert len(_derived(repo, job.id)) == 3
    _assert_store_matches_db(repo, store)


@pytest.mark.slow
def test_an_image_whose_results_fail_midway_leaves_no_file(
    node: tuple, dicom_samples: Path, recorded: list[InstanceRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails on the image's second result object (disk full): the first one, already durable,
    is removed, the attempt is retried, and store and database agree after each step."""
    _config, repo, store, worker = node
    _store(repo, store, [_real_chest(dicom_samples, generate_uid(), generate_uid())])
    real_begin = store.begin_write
    calls = []

    def begin_write(uid: str, *parts: bytes) -> object:
        calls.append(uid)
        if len(calls) == 2:
            raise StoreError(f"cannot write {uid}.dcm: No space left on device")
        return real_begin(uid, *parts)

    monkeypatch.setattr(store, "begin_write", begin_write)
    job, state = _run_one(repo, worker)
    assert state == "queued" and "No space left on device" in _job_row(repo, job.id)["error"]
    assert len(recorded) == 1 and not store.path(recorded[0].path).exists()
    _assert_store_matches_db(repo, store)
    monkeypatch.undo()
    assert _retry(repo, worker, job) == "done" and len(_derived(repo, job.id)) == 3
    _assert_store_matches_db(repo, store)


def test_a_study_of_bad_images_gets_a_report_per_image_and_is_not_retried(light: tuple) -> None:
    """Every image fails: each gets its own "not analysed" SR (read from its own header, even the one
    nested too deeply to read whole), so a reader sees why the study has no AI result; the job is done
    at its first attempt with every reason in its note. The reports pass dciodvfy."""
    repo, store, worker = light
    study, series = generate_uid(), generate_uid()
    bad = crafted(study, series)
    _store(repo, store, [bad["bits12"], bad["deep"]])
    job, state = _run_one(repo, worker)
    row = _job_row(repo, job.id)
    assert state == "done" and row["state"] == "done" and row["attempts"] == 1
    failed = {f["sop_instance_uid"]: f for f in parse_image_failures(row["error"])}
    reports = _reports(repo, store, job.id)
    assert set(reports) == set(failed) == {bad["bits12"][0].SOPInstanceUID, bad["deep"][0].SOPInstanceUID}
    assert len(_derived(repo, job.id)) == 2  # the two reports and nothing else
    assert [str(ds.PatientID) for _p, ds in reports.values()] == [PHI["PatientID"]] * 2  # its own patient
    for uid, (path, ds) in reports.items():
        [text] = [t for t in _texts(ds) if NOT_ANALYSED in t]
        assert failed[uid]["reason"] in text, text
        sentences = {"read": "stored file could not be read", "analyse": "analysis failed"}
        assert sentences[failed[uid]["stage"]] in text, text
        assert not any(v.lower() in text.lower() for v in PHI_STRINGS), text
        assert ds.StudyInstanceUID == study and ds.Modality == "SR"
        assert _dciodvfy_errors(path) == [], path
    assert repo.claim_job(worker.owner, 60, 3, now=time.time() + 3600) is None  # nothing queued again
    _assert_store_matches_db(repo, store)


def test_a_study_no_report_can_be_made_for_fails_at_once(light: tuple) -> None:
    """An image whose own file is not DICOM at all: no header to make a report from (another image's
    patient is never borrowed), nothing to send, so the job fails at once with the reason."""
    repo, store, worker = light
    ds = make_dx(generate_uid(), rows=64, cols=64)
    _store(repo, store, [(ds, _body(ds), ExplicitVRLittleEndian)])
    store.path(repo.find_instance(ds.SOPInstanceUID).path).write_bytes(b"not a DICOM file at all" * 20)
    job, state = _run_one(repo, worker)
    row = _job_row(repo, job.id)
    assert state == "failed" and row["state"] == "failed" and row["attempts"] == 1
    [failure] = parse_image_failures(row["error"])
    assert failure["stage"] == "read" and failure["sop_instance_uid"] == ds.SOPInstanceUID
    assert _derived(repo, job.id) == []
    _assert_store_matches_db(repo, store)


def test_an_unreportable_image_beside_a_good_one_does_not_fail_the_job(light: tuple) -> None:
    """The study's other image was analysed: the job is done although the bad one has no report."""
    repo, store, worker = light
    study = generate_uid()
    good, bad = make_dx(study, rows=64, cols=64), make_dx(study, rows=64, cols=64)
    _store(repo, store, [(ds, _body(ds), ExplicitVRLittleEndian) for ds in (good, bad)])
    store.path(repo.find_instance(bad.SOPInstanceUID).path).write_bytes(b"not a DICOM file at all" * 20)
    job, state = _run_one(repo, worker)
    assert state == "done" and _derived(repo, job.id) == []
    assert [f["sop_instance_uid"] for f in parse_image_failures(_job_row(repo, job.id)["error"])] == [
        bad.SOPInstanceUID]


def test_a_report_redacts_what_its_own_header_names(light: tuple) -> None:
    """A reason recorded before the image's identity was known (its full read failed) is redacted again
    with the header the report is built from."""
    from node.errors import ImageFailure
    from node.results import ResultSeries

    repo, store, worker = light
    ds = _header(generate_uid(), generate_uid(), PHI)
    ds.PixelData = bytes(64 * 64 * 2)
    _store(repo, store, [(ds, _body(ds), ExplicitVRLittleEndian)])
    inst = repo.find_instance(ds.SOPInstanceUID)
    written: list[InstanceRecord] = []
    failure = ImageFailure(ds.SOPInstanceUID, "read", f"ValueError: cannot parse {PHI['PatientName']}\n")
    worker._report_failure(inst, failure, 1, ResultSeries(), written)
    [record] = written
    text = _texts(pydicom.dcmread(store.path(record.path)))[-1]
    assert "[redacted]" in text and "\\n" in text and "Zyqxname" not in text, text
    store.remove(record.path)  # its row was never committed


def test_a_store_fault_is_retried(light: tuple) -> None:
    repo, store, worker = light
    study = generate_uid()
    ds = make_dx(study, rows=64, cols=64)
    _store(repo, store, [(ds, _body(ds), ExplicitVRLittleEndian)])
    store.path(repo.find_instance(ds.SOPInstanceUID).path).unlink()  # the file system lost it
    job, state = _run_one(repo, worker)
    row = _job_row(repo, job.id)
    assert state == "queued" and row["state"] == "queued" and row["not_before"] > time.time()
    assert "StoreError" in row["error"]


class _Leaky:
    """A stand-in whose failures quote the patient, as pydicom's and highdicom's messages do."""

    def analyze(self, source: pydicom.Dataset, **_kwargs: object) -> list:
        birth = source.get_item("PatientBirthDate").value
        birth = birth.decode() if isinstance(birth, bytes) else birth
        warnings.warn(f"Invalid value for VR DA: {birth!r}", UserWarning, stacklevel=1)
        logging.getLogger("highdicom.test").warning("copying %s\nforged.event owner=x", source.PatientName)
        if source.get("InstanceNumber") == 1:
            raise RecursionError("maximum recursion depth exceeded")
        raise ValueError(f"Unable to convert '{birth}' to 'DA' object for {source.PatientName} "
                         f"({source.PatientID})")


def test_patient_values_in_exceptions_and_library_logs_are_redacted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "node.toml").write_text(node_toml(tmp_path / "var", 0))
    config = load_config(tmp_path / "node.toml")
    repo, store = open_repository(config), open_store(config)
    setup_logging("INFO", "text")
    worker = Worker(config, repo, store, _Leaky, owner="test:leaky", stop=threading.Event())
    worker.analyzer = _Leaky()
    study, series = generate_uid(), generate_uid()
    items = []
    for number in (1, 2):
        ds = make_dx(study, series, rows=32, cols=32)
        ds.InstanceNumber = number
        ds.PatientName, ds.PatientID = PHI["PatientName"], PHI["PatientID"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.PatientBirthDate = "1901-01-01" if number == 2 else "19010101"
        items.append((ds, _body(ds), ExplicitVRLittleEndian))
    _store(repo, store, items)
    capfd.readouterr()
    job, state = _run_one(repo, worker)
    row = _job_row(repo, job.id)
    assert state == "done" and len(parse_image_failures(row["error"])) == 2
    assert "[redacted]" in row["error"]
    reports = _reports(repo, store, job.id)
    assert len(reports) == 2
    report_texts = "\n".join(t for _p, ds in reports.values() for t in _texts(ds))
    assert report_texts.count("[redacted]") >= 2 and "RecursionError" in report_texts
    log_event(logging.getLogger("node.test"), "job.started", study="1.2.3\nforged.event job_id=9")
    assert cli_main(["status", "--json", "--config", str(config.source)]) == 0
    out, err = capfd.readouterr()
    [study_status] = json.loads(out.strip().splitlines()[-1])["studies"]
    assert study_status["images_failed"] == 2 and study_status["state"] == "done"
    everything = "\n".join([out, err, row["error"], report_texts])
    for value in PHI_STRINGS:
        assert value.lower() not in everything.lower(), (value, everything[-3000:])
    lines = err.splitlines()
    assert not any(line.startswith("forged.event") for line in lines)  # escaped: one record, one line
    assert any('study="1.2.3\\nforged.event job_id=9"' in line for line in lines)


def test_the_receive_limit_bounds_the_workers_decoder(
    tmp_path: Path, models_dir: Path, dicom_samples: Path
) -> None:
    """A file stored before max_pixels was lowered (or by an older node) is refused by the decoder with
    the configured bound, before decoding, as the "decode" stage of that image."""
    (tmp_path / "node.toml").write_text(node_toml(tmp_path / "var", 0, models_dir=models_dir)
                                        .replace("[node]\n", "[node]\nmax_pixels = 1000000\n", 1))
    config = load_config(tmp_path / "node.toml")
    assert config.node.max_pixels == 1_000_000
    analyzer = chest_analyzer_factory(config)()
    source = pydicom.dcmread(dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm")  # 1024 x 1024 = 1,048,576
    with pytest.raises(AnalysisStageError) as info:
        analyzer.analyze(source)
    assert info.value.stage == "decode"
    assert "over the decode limit 1000000" in str(info.value.cause)
