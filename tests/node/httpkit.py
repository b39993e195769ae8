"""Helpers of the HTTP tests: a node configuration with [http] on, a running NodeService, C-STORE."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pydicom
import pytest
from nodekit import REPO, free_port, node_toml, stop_process, wait_for, which_or_fail
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from node.config import NodeConfig, load_config
from node.results import ResultSeries, build_result_objects
from node.service import NodeService

_RESULTS_TESTS = REPO / "tests" / "results"


def http_config(tmp: Path, *, token: str = "", models_dir: Path | None = None,
                destinations: list[dict] | None = None, node: dict | None = None,
                delivery: dict | None = None) -> NodeConfig:
    """A test node: DICOM and HTTP on free loopback ports, the shipped models unless told otherwise."""
    text = node_toml(tmp / "var", free_port(), models_dir=models_dir or REPO / "models",
                     destinations=destinations, node=node, delivery=delivery)
    text += f"[http]\nport = {free_port()}\nhost = \"127.0.0.1\"\ntoken = {json.dumps(token)}\n"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "node.toml"
    path.write_text(text)
    return load_config(path)


def base_url(config: NodeConfig) -> str:
    return f"http://127.0.0.1:{config.http.port}"


def client(config: NodeConfig, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url(config), headers=headers, timeout=60.0)


def start_service(config: NodeConfig, **kwargs: object) -> NodeService:
    service = NodeService(config, **kwargs)  # type: ignore[arg-type]
    service.start()
    return service


def c_store(config: NodeConfig, datasets: list[pydicom.Dataset]) -> list[int]:
    """Send ``datasets`` to the node by C-STORE (pynetdicom SCU); returns the statuses."""
    ae = AE(ae_title="TESTSCU")
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", config.node.port, ae_title=config.node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()



class OrthancDicomWeb:
    """Orthanc in its default configuration plus the DICOMweb plugin, HTTP basic auth on (STACK.md)."""

    PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

    def __init__(self, work: Path, user: str = "cxrnode", password: str = "pw-orthanc") -> None:
        self.work, self.user, self.password = work, user, password
        work.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "cxr-node-dicomweb-test",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {user: password},
            "Plugins": [self.PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config = work / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(self.user, self.password), timeout=60.0)

    def start(self, timeout: float = 30.0) -> OrthancDicomWeb:
        if not Path(self.PLUGIN).is_file():
            pytest.fail(f"{self.PLUGIN} missing: install orthanc-dicomweb (see .ci/run)")
        self.proc = subprocess.Popen([which_or_fail("Orthanc"), str(self.config)],
                                     stdout=(self.work / "orthanc.log").open("wb"), stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.work / 'orthanc.log').read_text()[-3000:]}")
            try:
                with self.http() as http:
                    return http.get("/system").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout, what="Orthanc with the DICOMweb plugin")
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def study_instances(self, study_uid: str) -> list[dict]:
        """QIDO-RS through the plugin: the instances of one study, as DICOM JSON."""
        with self.http() as http:
            response = http.get(f"/dicom-web/studies/{study_uid}/instances")
        if response.status_code in (204, 404):
            return []
        response.raise_for_status()
        return response.json()


class WriterAnalyzer:
    """The node's result writers on a hand-built ChestResult (tests/results/factories.py): COVID-19
    0.81 present, two GGO boxes. Real SEG, SR and secondary capture without loading model weights."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def analyze(self, source: pydicom.Dataset, *, series: ResultSeries | None = None,
                instance_number: int = 1) -> list[pydicom.Dataset]:
        if str(_RESULTS_TESTS) not in sys.path:
            sys.path.insert(0, str(_RESULTS_TESTS))
        from factories import make_result

        if str(source.get("ImageComments", "")) == "analysis fails":  # an image the worker cannot analyse
            raise ValueError("pixel data the pipeline cannot read")
        with self.lock:
            return build_result_objects(source, make_result(source, seed=instance_number), series=series,
                                        instance_number=instance_number)


def chromium(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian ``chromium``) with ``args``: --screenshot, --dump-dom ..."""
    exe = which_or_fail("chromium")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=timeout)
