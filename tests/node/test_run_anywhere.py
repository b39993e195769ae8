"""The node runs from any folder and fails fast without its models.

The commands are started as a user would, from a folder that is not the repository: the shipped
models are found from the installed code, relative paths in a configuration file are relative to
that file, and ``serve`` / ``worker`` refuse to start (exit 1, the folder named) when the models
cannot be loaded instead of accepting studies they will never analyse. ``status`` lists the models
the running workers use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from nodekit import DX_PRESENTATION, REPO, free_port, make_dx, node_toml, wait_for, wait_port
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from node.config import load_config
from node.errors import ModelsUnavailableError
from node.service import NodeService
from pipelines.errors import BundleError

CLI = [sys.executable, "-m", "node.cli.main"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CXR_NODE_MODELS", None)
    return env


def _config(etc: Path, port: int, models: str, **worker: object) -> Path:
    """A config file in ``etc`` whose data_dir ("var") and models_dir are relative to ``etc``."""
    etc.mkdir(parents=True, exist_ok=True)
    path = etc / "node.toml"
    path.write_text(node_toml(Path("var"), port, models_dir=Path(models),
                              worker={"poll_seconds": 0.2, **worker}))
    return path


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_default_models_are_the_shipped_ones_from_any_folder(tmp_path: Path) -> None:
    code = ("from node.cli.analyze import default_models_dir; from node.config import load_config; "
            "print(default_models_dir()); print(load_config(None).models_dir)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == [str(REPO / "models")] * 2
    assert (REPO / "models" / "projection").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["status"], ["resend"], ["purge", "--older-than-days", "30"]])
def test_operator_commands_where_no_node_runs_say_so_and_create_nothing(tmp_path: Path,
                                                                        command: list[str]) -> None:
    """Without --config the database is in ./var: a command run elsewhere names the file it looked
    for instead of reporting an empty node (and leaving an empty database or audit trail there)."""
    config = str(_config(tmp_path / "etc", 0, "m"))
    for args in ([], ["--config", config]):
        out = subprocess.run([*CLI, *command, *args], cwd=tmp_path, env=_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 1 and out.stdout == ""
        assert "no node database at" in out.stderr and "cxr-node.sqlite3" in out.stderr
    assert not (tmp_path / "var").exists() and not (tmp_path / "etc" / "var").exists()


def test_analyze_from_another_folder_uses_the_shipped_models(tmp_path: Path, dicom_samples: Path) -> None:
    chest = dicom_samples / "txv_siim_ptx_CR_chest_PA.dcm"
    run = subprocess.run([*CLI, "analyze", str(chest), "--out", "out", "--json", "--device", "cpu"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(run.stdout.strip().splitlines()[-1])
    assert record["outputs"] and all((tmp_path / p).is_file() for p in record["outputs"])
    assert all((tmp_path / p).resolve().is_relative_to(tmp_path / "out") for p in record["outputs"])
    shipped = {json.loads(f.read_text())["name"] for f in (REPO / "models").rglob("metadata.json")}
    assert record["models"] and set(record["models"]) <= shipped


@pytest.mark.slow
def test_serve_and_worker_with_unloadable_models_exit_naming_the_folder(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path / "etc", port, "missing-models")
    folder = str((tmp_path / "etc" / "missing-models").resolve())
    serve = subprocess.Popen([*CLI, "serve", "--config", str(config)], cwd=tmp_path, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened = False
    while serve.poll() is None:  # the listener must never open before the models are in place
        opened = opened or _port_open(port)
    out, err = serve.communicate(timeout=120)
    assert serve.returncode == 1 and not opened
    assert "cannot load the models from" in err and folder in err, err[-2000:]
    worker = subprocess.run([*CLI, "worker", "--config", str(config)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 1 and folder in worker.stderr, worker.stderr[-2000:]


@pytest.mark.slow
def test_serve_from_another_folder_analyses_and_status_shows_the_models(tmp_path: Path,
                                                                        models_dir: Path) -> None:
    etc, cwd = tmp_path / "etc", tmp_path / "elsewhere"
    cwd.mkdir()
    port = free_port()
    config = _config(etc, port, os.path.relpath(models_dir, etc))
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([*CLI, "serve", "--config", str(config)], cwd=cwd, env=_env(), stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        wait_port(port, 180, serve)
        assert (etc / "var").is_dir() and not (cwd / "var").exists()  # data_dir beside the file

        def status() -> dict:
            out = subprocess.run([*CLI, "status", "--json", "--config", "../etc/node.toml"], cwd=cwd,
                                 env=_env(), capture_output=True, text=True, timeout=60, check=True)
            return json.loads(out.stdout)

        [process] = status()["analysis_processes"]
        names = {m["task"]: (m["name"], m["version"]) for m in process["models"]}
        assert names["projection"][0] == "random-projection" and names["lungs"][0] == "random-lungs"
        assert set(names) >= {"projection", "lungs", "covid", "ggo_detection", "ggo_segmentation"}
        assert all(version for _name, version in names.values())
        assert process["role"] == "serve" and not process["stale"]
        assert Path(process["models_dir"]) == models_dir.resolve()
        text = subprocess.run([*CLI, "status", "--config", str(config)], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=60, check=True).stdout
        assert "random-projection" in text

        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
        assert assoc.is_established
        assert assoc.send_c_store(make_dx(generate_uid(), seed=1)).Status == 0
        assoc.release()
        wait_for(lambda: status()["jobs"]["done"] == 1, 120, what="the study analysed")
        assert status()["results"] >= 1
    finally:
        serve.terminate()
        serve.wait(60)
        log.close()
    assert serve.returncode == 0
    assert status()["analysis_processes"] == []  # a clean stop removes the process's row


class _Stub:
    def analyze(self, source: object, **_kwargs: object) -> list:
        return []

    def models(self) -> list[dict[str, str]]:
        return [{"task": "projection", "name": "stub", "version": "0.0.1"}]


def test_waiting_for_models_keeps_the_listener_closed(tmp_path: Path) -> None:
    config_path = tmp_path / "node.toml"
    config_path.write_text(node_toml(tmp_path / "var", free_port(), worker={"load_retry_seconds": 0.1}))
    config = load_config(config_path)
    calls = []

    def factory() -> _Stub:  # the models "arrive" at the third look, however slow the machine
        calls.append(_port_open(config.node.port))
        if len(calls) < 3:
            raise BundleError(f"{config.models_dir}: no bundle for task(s) projection")
        return _Stub()

    service = NodeService(config, analyzer_factory=factory, workers=1, deliver=False)
    service.start()
    try:
        assert len(calls) >= 3 and not any(calls)  # tried again, listener closed all along
        assert _port_open(config.node.port)
    finally:
        service.stop(timeout=10)

    fail_fast = load_config(config_path)
    fail_fast.worker.load_retry_seconds = 0.0
    service = NodeService(fail_fast, analyzer_factory=lambda: (_ for _ in ()).throw(BundleError("gone")),
                          workers=1, deliver=False)
    with pytest.raises(ModelsUnavailableError, match=str(fail_fast.models_dir.resolve())):
        service.start()
    assert service.server is None and not _port_open(fail_fast.node.port)
    service.stop(timeout=5)
