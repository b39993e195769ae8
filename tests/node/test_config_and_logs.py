"""Configuration parsing (defaults, the shipped example, precise errors) and log hygiene."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nodekit import REPO

from node.config import Destination, NodeConfig, load_config, parse_config
from node.errors import ConfigError
from node.logs import log_event


def test_defaults_are_the_documented_ones() -> None:
    config = load_config(None)
    assert (config.node.ae_title, config.node.port, config.node.data_dir) == ("CXRNODE", 11112, "var")
    assert config.node.database_url == "" and config.database_url.startswith("sqlite:///")
    assert config.node.study_stable_seconds == 10 and config.node.allowed_calling_aets == []
    assert config.node.max_associations == 16 and config.node.durability == "fsync"
    assert config.pipeline.models_dir == "" and config.destinations == []
    assert config.models_dir == REPO / "models"  # the shipped models, whatever the working directory
    assert config.worker.load_retry_seconds == 0  # models missing: exit at once


def test_relative_paths_in_a_file_are_relative_to_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "node.toml").write_text('[node]\ndata_dir = "data"\ndatabase_url = "sqlite:///db/n.sqlite3"\n'
                                      '[pipeline]\nmodels_dir = "../bundles"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/node.toml"))
    assert config.data_dir == folder.resolve() / "data"
    assert config.models_dir.resolve() == (tmp_path / "bundles").resolve()
    assert config.database_url == f"sqlite:///{folder.resolve() / 'db' / 'n.sqlite3'}"
    assert load_config(None).data_dir == elsewhere / "var"  # no file: the working directory
    assert load_config(None).models_dir == REPO / "models"


def test_the_example_file_matches_the_defaults() -> None:
    example = load_config(REPO / "deploy" / "cxr-node.example.toml")
    defaults = NodeConfig()
    for table in ("node", "pipeline", "worker", "delivery", "http", "audit"):
        assert getattr(example, table) == getattr(defaults, table), table
    assert [d.name for d in example.destinations] == ["pacs"]
    assert example.destinations[0] == Destination(), "the example destination shows every default"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"node": {"ae_titel": "X"}}, "unknown key(s) ['ae_titel'] in [node]"),
        ({"node": {"port": "11112"}}, "[node].port must be int"),
        ({"node": {"durability": "maybe"}}, "[node].durability must be one of"),
        ({"node": {"ae_title": "A" * 17}}, "1-16 characters"),
        ({"nodes": {}}, "unknown table(s) ['nodes']"),
        ({"destinations": [{"name": "a"}, {"name": "a"}]}, "destination names must be unique"),
    ],
)
def test_bad_configuration_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.toml")
    assert message in str(err.value)


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_log_lines_refuse_patient_identity(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("node.test")
    with caplog.at_level(logging.INFO):
        log_event(log, "job.done", job_id=1, study="1.2.3", accession="A 1")
    assert caplog.records[-1].getMessage() == 'job.done job_id=1 study=1.2.3 accession="A 1"'
    with pytest.raises(ValueError, match="patient"):
        log_event(log, "oops", patient_name="Doe^John")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_value_with_a_newline_stays_on_one_line(fmt: str, capfd: pytest.CaptureFixture[str]) -> None:
    from node.logs import redacting, setup_logging

    setup_logging("INFO", fmt)
    try:
        log = logging.getLogger("node.test")
        log_event(log, "job.started", study="1.2.3\nforged.event job_id=9\r")
        with redacting({"Doe^Jane"}):
            logging.getLogger("pydicom").warning("bad value 'doe^jane'\nforged.event x=1")
        lines = capfd.readouterr().err.splitlines()
    finally:
        setup_logging("INFO", "text")
    assert len(lines) == 2 and not any("forged" in line.split(" ")[0] for line in lines)
    assert "doe^jane" not in "\n".join(lines).lower() and "[redacted]" in lines[1]
