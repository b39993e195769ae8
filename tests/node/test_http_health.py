"""The HTTP face's probes and authentication, over real HTTP against a running node.

/healthz answers without a token; every other path needs "Authorization: Bearer <token>" when
a token is set (401 with a Bearer challenge otherwise); /readyz fails (503) when the disk is
below the watermark or the models are not loaded, naming the check.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from httpkit import base_url, client, http_config, start_service
from nodekit import REPO, free_port

from node.config import load_config, parse_config
from node.errors import ConfigError
from node.http.app import HttpContext, HttpServer, HttpServerError
from node.http.health import workers_ready
from node.service import NodeService, open_repository, open_store
from node.worker import Worker

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    config = http_config(tmp_path_factory.mktemp("health"), token=TOKEN)
    service = start_service(config, workers=0, deliver=False)
    yield service
    service.stop(timeout=20)


def test_healthz_needs_no_token(node: NodeService) -> None:
    with client(node.config) as http:
        response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/readyz", "/metrics", "/", "/no-such-page"])
def test_every_other_path_needs_the_token(node: NodeService, path: str) -> None:
    with client(node.config) as http:
        missing = http.get(path)
        wrong = http.get(path, headers={"Authorization": "Bearer not-the-token"})
        basic = http.get(path, headers={"Authorization": "Basic dXNlcjpwdw=="})
    for response in (missing, wrong, basic):
        assert response.status_code == 401, (path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer")
    with client(node.config, TOKEN) as http:
        assert http.get(path).status_code != 401


def test_a_post_needs_the_token_too(node: NodeService) -> None:
    with client(node.config) as http:
        media = 'multipart/related; type="application/dicom"; boundary=b'
        response = http.post("/dicomweb/studies", content=b"x", headers={"Content-Type": media})
        resend = http.post("/resend", data={"destination": "pacs"})
    assert response.status_code == 401
    assert resend.status_code == 401


def test_readyz_reports_each_check(node: NodeService) -> None:
    with client(node.config, TOKEN) as http:
        response = http.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"database", "disk", "models"}
    assert body["checks"]["database"]["detail"] == "sqlite"
    assert body["checks"]["disk"]["free_bytes"] > 0


def test_readyz_fails_below_the_disk_watermark(tmp_path: Path) -> None:
    config = http_config(tmp_path, node={"min_free_disk_mb": 2**40})
    service = start_service(config, workers=0, deliver=False, listen=False)
    try:
        response = httpx.get(f"{base_url(config)}/readyz", timeout=30)
    finally:
        service.stop(timeout=20)
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"]["disk"]["ok"] is False
    assert "min_free_disk_mb" in body["checks"]["disk"]["detail"]
    assert body["checks"]["database"]["ok"] is True


def test_readyz_fails_until_the_models_are_loaded(tmp_path: Path) -> None:
    """A worker whose models could not load makes the node not ready, with the loader's error."""
    config = http_config(tmp_path)
    repo, store = open_repository(config), open_store(config)

    def broken() -> object:
        raise FileNotFoundError("models folder not found: /nowhere")

    worker = Worker(config, repo, store, broken, owner="t:w0", stop=threading.Event())  # type: ignore[arg-type]
    assert worker.load() is False
    workers = [(worker, threading.current_thread())]
    server = HttpServer(HttpContext(config, repo, store, None, models_ready=lambda: workers_ready(workers)))
    server.start()
    try:
        response = httpx.get(f"{base_url(config)}/readyz", timeout=30)
    finally:
        server.stop()
    assert response.status_code == 503
    models = response.json()["checks"]["models"]
    assert models["ok"] is False
    assert "models folder not found" in models["detail"]


def test_http_off_by_default_and_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    assert load_config(None).http.port == 0
    config = http_config(tmp_path)
    repo, store = open_repository(config), open_store(config)
    first = HttpServer(HttpContext(config, repo, store))
    first.start()
    try:
        with pytest.raises(HttpServerError, match=f"127.0.0.1:{config.http.port}"):
            HttpServer(HttpContext(config, repo, store)).start(timeout=10)
    finally:
        first.stop()


def test_http_stops_with_the_node(tmp_path: Path) -> None:
    config = http_config(tmp_path)
    service = start_service(config, workers=0, deliver=False)
    assert httpx.get(f"{base_url(config)}/healthz", timeout=10).status_code == 200
    service.stop(timeout=20)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url(config)}/healthz", timeout=5)
    assert free_port()  # the port pool still works after a stop


def test_http_settings_are_checked() -> None:
    config = parse_config({"http": {"port": 8080, "host": "0.0.0.0", "token": "t"}})
    assert (config.http.port, config.http.host, config.http.token) == (8080, "0.0.0.0", "t")
    with pytest.raises(ConfigError, match=r"\[http\]\.port"):
        parse_config({"http": {"port": 70000}})
    with pytest.raises(ConfigError, match="prot"):
        parse_config({"http": {"prot": 8080}})


def test_deploy_files_probe_and_scrape_what_the_node_serves(node: NodeService) -> None:
    """deploy/kubernetes probes and deploy/prometheus scrape paths answer on a running node; the
    ConfigMap's node configuration is one the node accepts."""
    manifests = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "cxr-node.yaml").read_text()))
    config_map = next(m for m in manifests if m["kind"] == "ConfigMap")
    parse_config(tomllib.loads(config_map["data"]["cxr-node.toml"]))
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    probes = {name: container[name]["httpGet"]["path"] for name in ("livenessProbe", "readinessProbe")}
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    with client(node.config) as anonymous, client(node.config, TOKEN) as http:
        assert anonymous.get(probes["livenessProbe"]).status_code == 200
        assert http.get(probes["readinessProbe"]).status_code == 200
        assert job["authorization"]["type"] == "Bearer"
        assert http.get(job["metrics_path"]).text.startswith("# HELP cxr_node_")
