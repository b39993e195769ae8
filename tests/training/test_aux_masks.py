"""Training on a second mask convention through an extra output head ([data] aux_mask_datasets)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import config_from_dict
from training.errors import ConfigError

SMALL_UNET = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}


def test_aux_heads_unet_serves_its_first_channel_in_eval_mode_with_a_plain_unet_state_dict() -> None:
    from pipelines.networks import unet

    torch.manual_seed(0)
    net = unet(**SMALL_UNET, aux_heads=1)
    x = torch.randn(2, 1, 32, 32)
    assert net.train()(x).shape == (2, 2, 32, 32)
    served = net.eval()(x)
    assert served.shape == (2, 1, 32, 32)
    plain = unet(**SMALL_UNET, out_channels=2).eval()
    plain.load_state_dict(net.state_dict())  # same keys and shapes: an ordinary bundle state_dict
    assert torch.allclose(plain(x)[:, :1], served)


def test_heads_loss_learns_each_channel_only_from_the_rows_labelled_in_it() -> None:
    from training.data import UNLABELLED
    from training.losses import HeadsSegLoss, SegLoss

    target = torch.full((2, 2, 8, 8), UNLABELLED)
    target[0, 0] = 0.0
    target[0, 0, :4] = 1.0  # row 0: a channel-0 (task convention) mask
    target[1, 1] = 0.0
    target[1, 1, :, :3] = 1.0  # row 1: a channel-1 (other convention) mask
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    loss = HeadsSegLoss(SegLoss())(logits, target)
    loss.backward()
    grad = logits.grad
    assert grad is not None
    assert float(grad[0, 1].abs().sum()) == 0.0 and float(grad[1, 0].abs().sum()) == 0.0
    assert float(grad[0, 0].abs().sum()) > 0 and float(grad[1, 1].abs().sum()) > 0
    # each channel weighs by its share of the batch: here half and half
    seg = SegLoss()
    expected = 0.5 * seg(logits[:1, :1], target[:1, :1]) + 0.5 * seg(logits[1:, 1:], target[1:, 1:])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # an evaluation-mode network serving channel 0 alone is scored on the rows labelled there
    served = logits[:, :1].detach()
    one = HeadsSegLoss(SegLoss())(served, target)
    assert float(one) == pytest.approx(0.5 * float(SegLoss()(served[:1], target[:1, :1])), rel=1e-5)


def test_aux_mask_datasets_are_for_segmentation_tasks_only() -> None:
    with pytest.raises(ConfigError, match="aux_mask_datasets"):
        config_from_dict({"run": {"task": "covid", "name": "x"}, "data": {"aux_mask_datasets": ["x"]}})
    cfg = config_from_dict({"run": {"task": "lungs", "name": "x"}, "data": {"aux_mask_datasets": ["o"]}})
    assert cfg.data.aux_mask_datasets == ["o"]


def _lungs_cfg(out: Path, shared_data: Path, *, aux: bool, **extra: object) -> dict:
    from tiny_runs import tiny_config

    cfg = tiny_config("lungs", out, shared_data, **extra)
    cfg["data"]["sources"] = [{"adapter": "shared_kermany_v7", "path": "kermany_pediatric_v7"}]
    if aux:
        cfg["data"]["sources"].append({"adapter": "shared_openist", "path": "openist_normal_lungmask"})
        cfg["data"]["aux_mask_datasets"] = ["openist"]
    cfg["model"]["params"] = SMALL_UNET
    return cfg


def test_aux_rows_are_all_training_rows_and_the_other_rows_split_as_without_them(
    training_root: Path, shared_data: Path
) -> None:
    from training.data import prepare_rows
    from training.distributed import DistContext
    from training.tasks import TASK_SPECS

    def rows(aux: bool) -> list:
        cfg = _lungs_cfg(training_root / f"aux-split-{aux}", shared_data, aux=aux, data__max_images=0)
        return prepare_rows(config_from_dict(cfg), TASK_SPECS["lungs"], DistContext())[0]

    with_aux, without = rows(True), rows(False)
    assert {r.split for r in with_aux if r.dataset == "openist"} == {"train"}
    assert sum(r.dataset == "openist" for r in with_aux) == 274
    kermany = sorted((r.image_path, r.split) for r in with_aux if r.dataset != "openist")
    assert kermany == sorted((r.image_path, r.split) for r in without)
    assert {s for _, s in kermany} == {"train", "validation", "test"}


def test_a_two_convention_lungs_run_exports_a_one_channel_bundle(
    training_root: Path, shared_data: Path
) -> None:
    from pipelines.bundle import load_bundle
    from training.manifest import read_manifest
    from training.run import train_from_config

    cfg = _lungs_cfg(training_root / "aux-run", shared_data, aux=True, data__max_images=8)
    bundle = train_from_config(config_from_dict(cfg), device="cpu")
    assert bundle is not None
    rows = read_manifest(bundle.parent.parent / "manifest.csv")
    assert any(r.dataset == "openist" for r in rows)
    assert not any(r.dataset == "openist" and r.split != "train" for r in rows)
    loaded = load_bundle(bundle, "lungs")
    assert loaded.metadata.network_def["aux_heads"] == 1
    with torch.no_grad():
        out = loaded.network(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64)
    validation = loaded.metadata.metrics["validation"]
    assert validation["n"] == sum(r.split == "validation" for r in rows) > 0
