"""The class-conditional source adversary ([train] source_adversary): reversal, negatives only,
training-only (the exported bundle is the plain classifier)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.adversary import SourceAdversary, WithIndex, negative_sources, ramp, reverse_gradient
from training.errors import ConfigError
from training.manifest import ManifestRow


def test_reversal_is_identity_forward_and_scaled_negation_backward() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))
    assert ramp(0.0) == 0.0 and 0.98 < ramp(0.5) < 1.0 and ramp(2.0) == ramp(1.0)


def _row(dataset: str) -> ManifestRow:
    return ManifestRow(image_path=f"{dataset}/x.png", dataset=dataset, patient_id="p")


def test_groups_are_the_negatives_collections_and_positives_are_left_out() -> None:
    rows = [_row("ieee8023"), _row("nih_cxr14"), _row("ieee8023"), _row("nih_cxr14")]
    groups, names = negative_sources(rows, [1, 0, 0, 0])
    assert names == ["ieee8023", "nih_cxr14"] and groups == [-1, 1, 0, 1]


def test_the_adversary_reads_the_last_linear_input_and_pushes_the_backbone_the_other_way() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1))
    adversary = SourceAdversary(net, groups=[-1, 0, 1, 1], n_groups=2, weight=1.0)
    x = torch.randn(4, 5)
    net(x)
    loss = adversary.loss(torch.tensor([0, 1, 2, 3]), progress=1.0)
    loss.backward()
    head_grad = adversary.head[0].weight.grad
    backbone_grad = net[0].weight.grad.clone()
    assert head_grad is not None and head_grad.abs().sum() > 0

    # Without reversal (same features, same head) the backbone's gradient is the exact opposite.
    net.zero_grad()
    features = net[1](net[0](x))
    plain = nn.functional.cross_entropy(adversary.head(features[1:]), torch.tensor([0, 1, 1]))
    plain.backward()
    assert torch.allclose(backbone_grad, -ramp(1.0) * net[0].weight.grad, atol=1e-6)

    # A batch of positives only gives no adversary loss; after detach the hook is gone.
    net(x)
    assert float(adversary.loss(torch.tensor([0, 0]), progress=1.0).detach()) == 0.0
    adversary.detach()
    net(x)
    with pytest.raises(RuntimeError):
        adversary.loss(torch.tensor([1]), progress=1.0)


def test_negatives_from_one_collection_are_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 1))
    with pytest.raises(ConfigError, match=">= 2 datasets"):
        SourceAdversary(net, groups=[0, 0, -1], n_groups=1, weight=1.0)
    assert WithIndex([(1, 2), (3, 4)])[1] == (3, 4, 1)


def test_a_covid_run_with_the_adversary_exports_the_plain_classifier(
    training_root: Path, shared_data: Path
) -> None:
    from tiny_runs import tiny_config

    from pipelines.bundle import load_bundle
    from training.config import config_from_dict
    from training.run import train_from_config

    cfg = tiny_config("covid", training_root / "adversary", shared_data, train__source_adversary=0.5)
    cfg["data"]["max_images"] = 16
    cfg["model"] = {"architecture": "resnet18", "params": {"width": 8}}
    bundle = train_from_config(config_from_dict(cfg), device="cpu")
    assert bundle is not None
    last = torch.load(bundle.parent.parent / "checkpoints" / "last.pt", weights_only=False)
    assert set(last["adversary"]) == {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    loaded = load_bundle(bundle, "covid", device="cpu")
    assert set(loaded.network.state_dict()) == set(last["model"])
    assert loaded.metadata.training_data["config"]["train"]["source_adversary"] == 0.5
