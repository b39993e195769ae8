"""The same trainer under torchrun with two gloo processes on CPU (DDP), tiny data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import tiny_config, to_toml

pytestmark = pytest.mark.slow  # two torchrun processes and the tiny trainings: ~60 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_give_the_same_bundle_format(
    training_root: Path, shared_data: Path, tiny_models: dict[str, Path]
) -> None:
    from pipelines.bundle import load_bundle, read_metadata

    # projection: a torchvision ResNet, no MONAI import in the two worker processes (~11 s each)
    cfg = tiny_config("projection", training_root / "ddp", shared_data)
    cfg["run"]["name"] = "tiny-projection-ddp"
    cfg["data"]["near_duplicates"] = False
    cfg["data"]["cache_dir"] = str(training_root / "ddp" / "cache")
    config = training_root / "ddp.toml"
    config.write_text(to_toml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "training.run",
        str(config),
        "--device",
        "cpu",
    ]
    done = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=420
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1/2 joined (gloo)" in done.stderr and "rank 0/2 joined (gloo)" in done.stderr
    bundle = training_root / "ddp" / "tiny-projection-ddp" / "bundles" / "tiny-projection-ddp"
    ddp_meta, single_meta = read_metadata(bundle), read_metadata(tiny_models["projection"])
    assert set(ddp_meta.to_json()) == set(single_meta.to_json())
    assert set(ddp_meta.metrics["test"]) == set(single_meta.metrics["test"])
    assert ddp_meta.network_def == single_meta.network_def
    assert load_bundle(bundle, "projection").metadata.name == "tiny-projection-ddp"
    lines = (bundle.parent.parent / "metrics.csv").read_text().splitlines()
    assert len(lines) == 2  # one epoch, logged once (rank 0 only)
