"""Helpers of the node tests: ports, waits, synthetic DX images, node/storescp/Orthanc processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[2]
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PG_URL = os.environ.get("CXR_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen | None, grace: float = 20.0) -> None:
    """SIGTERM a peer or node process and wait; SIGKILL it if it outlives ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def make_dx(
    study_uid: str,
    series_uid: str | None = None,
    *,
    rows: int = 96,
    cols: int = 96,
    accession: str = "ACC1",
    seed: int = 0,
) -> Dataset:
    """A small synthetic DX For Presentation chest image with the attributes the writers need."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = 2000 + 1500 * np.sin(xx / 9.0) * np.cos(yy / 11.0) + rng.normal(0, 50, (rows, cols))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.BurnedInAnnotation = "NO"
    ds.Laterality = ""
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "R-10214", "SRT", "postero-anterior"
    ds.ViewCodeSequence = Sequence([view])
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
    return ds


def moved_into_study(sample: Path, study: Dataset) -> Dataset:
    """A real object of another system (an SR, a SEG) moved into ``study``'s patient and study,
    with a series and SOP Instance UID of its own."""
    ds = pydicom.dcmread(sample)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                    "StudyDate", "StudyTime", "StudyID"):
        setattr(ds, keyword, study.get(keyword, ""))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_study(folder: Path, count: int, *, study_uid: str | None = None, **kwargs) -> list[Path]:  # noqa: ANN003
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series = generate_uid()
    paths = []
    for i in range(count):
        ds = make_dx(study_uid, series, seed=i, **kwargs)
        ds.InstanceNumber = i + 1
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def node_toml(
    data_dir: Path,
    port: int,
    *,
    models_dir: Path | None = None,
    destinations: list[dict] | None = None,
    node: dict | None = None,
    worker: dict | None = None,
    delivery: dict | None = None,
) -> str:
    """A test configuration: fast polling, short quiet period, short backoff; overrides per table."""
    tables: dict[str, dict] = {
        "node": {
            "ae_title": "CXRNODE",
            "host": "127.0.0.1",
            "port": port,
            "data_dir": str(data_dir),
            "study_stable_seconds": 1.0,
            "min_free_disk_mb": 16,
            **(node or {}),
        },
        "pipeline": {"models_dir": str(models_dir or data_dir / "no-models"), "device": "cpu"},
        "worker": {"poll_seconds": 0.2, "lease_seconds": 60.0, **(worker or {})},
        "delivery": {
            "poll_seconds": 0.2,
            "backoff_seconds": 0.5,
            "backoff_max_seconds": 2.0,
            "max_attempts": 30,
            **(delivery or {}),
        },
    }
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    for dest in destinations or []:
        lines.append("[[destinations]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in dest.items()]
    return "\n".join(lines) + "\n"


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class NodeProcess:
    """``cxr-node serve`` as a real process (so it can be SIGKILLed and SIGTERMed)."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str, timeout: float = 300.0) -> NodeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "serve", "--config", str(self.config_path), *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_port(self.port, timeout, self.proc)
        return self

    def kill(self, *, children: bool = True) -> None:
        """SIGKILL the node: serve and (``children``) the processes it started (listener processes),
        as a crash of the machine or a supervisor killing the unit's processes would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = _children(self.proc.pid) if children else []
        self.proc.send_signal(signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def status(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "node.cli.main", "status", "--json", "--config", str(self.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,  # a loaded 2-core machine: the CLI's imports alone can take seconds
            check=True,
        )
        return json.loads(out.stdout)

    def status_text(self) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "node.cli.main", "status", "--config", str(self.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,  # a loaded 2-core machine: the CLI's imports alone can take seconds
            check=True,
        )
        return out.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class WorkerProcess:
    """``cxr-node worker``: a scale-out analysis worker beside the node (same config and data)."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path, self.log_path = config_path, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "worker", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


class System:
    """The system under test: serve (listener, scheduler, in-process worker, delivery) plus one
    worker process, a dcmtk storescp destination and an Orthanc PACS (both started by the tests)."""

    def __init__(self, root: Path, models_dir: Path) -> None:
        self.work = root / "system"
        self.work.mkdir(parents=True, exist_ok=True)
        node_port, dest_port = free_port(), free_port()
        self.storescp = StoreSCP(self.work / "storescp", dest_port)
        self.orthanc = Orthanc(self.work / "orthanc", node_port)
        toml = node_toml(
            self.work / "var",
            node_port,
            models_dir=models_dir,
            worker={"load_retry_seconds": 1.0},
            destinations=[
                {"name": "dcmtk", "ae_title": "DEST", "host": "127.0.0.1", "port": dest_port},
                {
                    "name": "orthanc",
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": self.orthanc.dicom_port,
                },
            ],
        )
        (self.work / "node.toml").write_text(toml)
        self.node = NodeProcess(self.work / "node.toml", node_port, self.work / "node.log")
        self.worker = WorkerProcess(self.work / "node.toml", self.work / "worker.log")

    def start(self) -> System:
        self.worker.start()
        self.node.start()
        return self

    def stop(self) -> None:
        self.storescp.stop()
        self.orthanc.stop()
        for proc in (self.node.proc, self.worker.proc):
            stop_process(proc, grace=60)


# -- dcmtk storescp as a destination ----------------------------------------------------------
class StoreSCP:
    """dcmtk ``storescp`` in its default configuration (storage SOP classes in uncompressed transfer
    syntaxes only, like many archives); ``accept_all`` adds ``+xa`` (every transfer syntax)."""

    def __init__(self, folder: Path, port: int, aet: str = "DEST", *, accept_all: bool = False) -> None:
        self.folder, self.port, self.aet, self.accept_all = folder, port, aet, accept_all
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> StoreSCP:
        # -od/-uf only say where files go (folder, names by UID); no option about what is accepted
        options = ["+xa"] if self.accept_all else []
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.aet, *options, "-od", str(self.folder), "-uf", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 30, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())  # -uf: named by UID, no suffix


# -- a pynetdicom SCP that stores only some SOP classes ---------------------------------------
class OnlySomeClassesSCP:
    """A Storage SCP accepting only ``sop_classes`` (in the default transfer syntaxes): an archive
    that takes SR but not SEG or secondary capture. Received datasets are written to ``folder``."""

    def __init__(self, folder: Path, port: int, sop_classes: list[str], aet: str = "SRONLY",
                 statuses: dict[str, int] | None = None) -> None:
        """``statuses``: the C-STORE status answered per SOP class (default 0x0000, stored)."""
        from pynetdicom import AE, evt

        self.folder, self.port, self.statuses = folder, port, statuses or {}
        folder.mkdir(parents=True, exist_ok=True)
        self.ae = AE(ae_title=aet)
        for uid in sop_classes:
            self.ae.add_supported_context(uid)
        self.handlers = [(evt.EVT_C_STORE, self._on_store)]
        self.server = None

    def _on_store(self, event) -> int:  # noqa: ANN001 - pynetdicom event
        status = self.statuses.get(str(event.request.AffectedSOPClassUID), 0x0000)
        if status != 0x0000:
            return status
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    def start(self) -> OnlySomeClassesSCP:
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=self.handlers)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


# -- Orthanc ----------------------------------------------------------------------------------
class Orthanc:
    def __init__(self, work: Path, node_port: int) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        template = (REPO / "deploy" / "orthanc" / "orthanc-test.json.template").read_text()
        config = (
            template.replace("@STORAGE@", str(work / "storage"))
            .replace("@INDEX@", str(work / "index"))
            .replace("@HTTP_PORT@", str(self.http_port))
            .replace("@DICOM_PORT@", str(self.dicom_port))
            .replace("@NODE_PORT@", str(node_port))
            .replace("@NODE_AET@", "CXRNODE")
        )
        json.loads(config)  # the template must stay valid JSON
        self.config = work / "orthanc.json"
        self.config.write_text(config)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.proc = subprocess.Popen(
            ["Orthanc", str(self.config)],
            stdout=(self.work / "orthanc.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self._up(), timeout, what="Orthanc REST")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with {self.proc.returncode}: {(self.work / 'orthanc.log').read_text()}"
            )
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> object:
        return self.request("GET", path, timeout=5)

    def get_bytes(self, path: str) -> bytes:
        """A raw resource, e.g. ``/instances/ID/file`` (the stored DICOM file)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as resp:
            return bytes(resp.read())

    def stop(self) -> None:
        stop_process(self.proc)


def which_or_fail(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not installed (run .ci/run, which installs the Debian packages the tests use)")
    return path
