"""Helpers of the HTTP tests: a node configuration with [http] on, a running NodeService, C-STORE."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pydicom
from nodekit import REPO, free_port, node_toml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from node.config import NodeConfig, load_config
from node.service import NodeService


def http_config(tmp: Path, *, token: str = "", models_dir: Path | None = None,
                destinations: list[dict] | None = None, node: dict | None = None,
                delivery: dict | None = None) -> NodeConfig:
    """A test node: DICOM and HTTP on free loopback ports, the shipped models unless told otherwise."""
    text = node_toml(tmp / "var", free_port(), models_dir=models_dir or REPO / "models",
                     destinations=destinations, node=node, delivery=delivery)
    text += f"[http]\nport = {free_port()}\nhost = \"127.0.0.1\"\ntoken = {json.dumps(token)}\n"
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

