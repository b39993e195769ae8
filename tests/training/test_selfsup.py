"""SimSiam pretraining (training/selfsup.py, training/recipes/pretrain_simsiam.py): what it trains, what it
leaves alone, which pictures it reads, and that a labelled run can start from its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.networks import build_network
from training.manifest import ManifestRow, write_manifest
from training.selfsup import PretrainSettings, embedding_spread, pretrain, simsiam_loss


def _net() -> torch.nn.Module:
    return build_network("resnet18", in_channels=1, num_classes=1, width=4)


def test_loss_and_spread_have_their_known_values() -> None:
    z = torch.randn(16, 8)
    assert float(simsiam_loss(z, z, z, z)) == pytest.approx(-1.0)
    assert float(simsiam_loss(z, z, -z, -z)) == pytest.approx(1.0)
    assert embedding_spread(torch.ones(16, 8)) == pytest.approx(0.0)
    assert embedding_spread(torch.randn(4096, 64)) == pytest.approx(1 / 8, rel=0.1)  # healthy: 1/sqrt(dim)


def test_pretraining_moves_the_backbone_and_leaves_the_output_layer_as_built() -> None:
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1, 32, 32)).astype(np.float32) for _ in range(16)]
    history = pretrain(net, inputs, 32, PretrainSettings(epochs=2, batch_size=8, dim=32, seed=1))
    assert [h.epoch for h in history] == [0, 1] and all(np.isfinite(h.loss) for h in history)
    assert all(-1.0 <= h.loss <= 1.0 and h.spread > 0 for h in history)
    after = net.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in ("fc.weight", "fc.bias"))
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert not [m for m in net.modules() if m._forward_hooks]  # the feature hook is gone
    fresh = _net()
    fresh.load_state_dict(after)  # strict: the file a labelled run starts from fits the network


def test_too_few_pictures_for_a_batch_are_refused() -> None:
    with pytest.raises(ValueError, match="full batch of 8"):
        inputs = [np.zeros((1, 32, 32), np.float32)] * 5
        pretrain(_net(), inputs, 32, PretrainSettings(epochs=1, batch_size=8))


def test_the_recipe_reads_only_non_test_pictures_of_trained_datasets_and_its_file_starts_a_run(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_runs import tiny_config, to_toml

    from training.config import load_config
    from training.datasets import scan_dataset
    from training.recipes.pretrain_simsiam import main
    from training.trainers.loop import load_init_weights

    ieee = [r for r in scan_dataset("shared_ieee8023", shared_data / "ieee8023_covid_cxr")
            if r.projection == "frontal" and r.covid in ("0", "1")][:14]
    openist = scan_dataset("shared_openist", shared_data / "openist_normal_lungmask")[:3]
    rows: list[ManifestRow] = ieee + openist
    for i, r in enumerate(ieee):
        r.split = "test" if i < 4 else "validation" if i < 6 else "train"
    for r in openist:
        r.split = "validation"  # OpenIST has no train rows: never pretrained on
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    cfg = tiny_config("covid", tmp_path / "runs", shared_data, data__manifest=str(manifest),
                      data__max_images=0, data__sources=[], model__architecture="resnet18",
                      model__params={"width": 4})
    config = tmp_path / "pre.toml"
    config.write_text(to_toml(cfg), encoding="utf-8")
    out = tmp_path / "init.pt"
    assert main([str(config), "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["pool"] == 10 and record["pool_by_dataset"] == {"ieee8023": 10}
    assert record["sha256"] in capsys.readouterr().out and len(record["history"]) == 1

    cfg["model"].update(init_weights=str(out), init_sha256=record["sha256"])
    config.write_text(to_toml(cfg), encoding="utf-8")
    run_cfg = load_config(config)
    net = _net()
    load_init_weights(net, run_cfg)
    assert torch.equal(net.state_dict()["conv1.weight"], torch.load(out, weights_only=True)["conv1.weight"])

    for r in rows:
        r.split = ""
    write_manifest(rows, manifest)
    assert main([str(config), "--epochs", "1", "--out", str(out)]) == 2
    assert "must assign every row a split" in capsys.readouterr().err
