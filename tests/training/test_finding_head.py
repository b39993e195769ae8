"""The training-only "any finding" head ([train] finding_aux): which rows feed it, what it trains,
and that the exported bundle is the plain classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.errors import ConfigError
from training.finding_head import FindingHead, finding_labels
from training.manifest import ManifestRow


def _row(dataset: str, findings: list[str]) -> ManifestRow:
    return ManifestRow(image_path=f"{dataset}/x.png", dataset=dataset, patient_id="p", findings=findings)


def test_labels_come_only_from_the_listed_datasets_and_no_finding_is_normal() -> None:
    rows = [
        _row("nih_cxr14", []),  # NIH's adapter drops "No Finding"
        _row("nih_cxr14", ["Pneumonia", "Effusion"]),
        _row("ieee8023", ["No Finding"]),
        _row("ieee8023", ["COVID-19"]),
        _row("ieee8023", ["SARS"]),
        _row("openist", []),  # not listed: its empty findings say nothing here
    ]
    assert finding_labels(rows, ["nih_cxr14", "ieee8023"]) == [0, 1, 0, 1, 1, -1]
    assert finding_labels(rows, []) == [-1] * 6


def test_the_head_trains_on_the_labelled_rows_and_moves_the_backbone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1))
    head = FindingHead(net, labels=[-1, 0, 1, 1], weight=2.0)
    x = torch.randn(4, 5)
    net(x)
    loss = head.loss(torch.tensor([0, 1, 2, 3]))
    features = net[1](net[0](x)).detach()
    expected = 2.0 * nn.functional.binary_cross_entropy_with_logits(
        head.head(features[1:]).reshape(-1), torch.tensor([0.0, 1.0, 1.0])
    )
    assert torch.allclose(loss, expected)
    loss.backward()
    assert head.head.weight.grad.abs().sum() > 0 and net[0].weight.grad.abs().sum() > 0
    assert net[2].weight.grad is None  # the COVID-19 output layer is not part of this loss

    net(x)
    assert float(head.loss(torch.tensor([0, 0])).detach()) == 0.0  # no labelled row in the batch
    head.detach()
    net(x)
    with pytest.raises(RuntimeError):
        head.loss(torch.tensor([1]))


def test_a_head_without_both_labels_is_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 1))
    with pytest.raises(ConfigError, match="both with and without findings"):
        FindingHead(net, labels=[1, 1, -1], weight=1.0)
    with pytest.raises(ConfigError, match="both with and without findings"):
        FindingHead(net, labels=[-1, -1], weight=1.0)


def test_the_config_refuses_a_negative_weight_or_no_datasets(tmp_path: Path) -> None:
    from training.config import config_from_dict

    base = {"run": {"task": "covid", "name": "x"}}
    with pytest.raises(ConfigError, match="finding_aux must be >= 0"):
        config_from_dict({**base, "train": {"finding_aux": -1.0}})
    with pytest.raises(ConfigError, match="needs finding_aux_datasets"):
        config_from_dict({**base, "train": {"finding_aux": 0.5}})


def test_a_covid_run_with_the_head_exports_the_plain_classifier(
    training_root: Path, shared_data: Path
) -> None:
    from tiny_runs import tiny_config

    from pipelines.bundle import load_bundle
    from training.config import config_from_dict
    from training.run import train_from_config

    cfg = tiny_config(
        "covid",
        training_root / "finding_head",
        shared_data,
        train__finding_aux=0.5,
        train__finding_aux_datasets=["ieee8023", "openist"],
    )
    cfg["data"]["max_images"] = 16
    cfg["model"] = {"architecture": "resnet18", "params": {"width": 8}}
    bundle = train_from_config(config_from_dict(cfg), device="cpu")
    assert bundle is not None
    last = torch.load(bundle.parent.parent / "checkpoints" / "last.pt", weights_only=False)
    assert set(last["finding_head"]) == {"head.weight", "head.bias"}
    loaded = load_bundle(bundle, "covid", device="cpu")
    assert set(loaded.network.state_dict()) == set(last["model"])
    assert loaded.metadata.training_data["config"]["train"]["finding_aux"] == 0.5


def test_the_nih_finding_manifest_relabels_nih_only_and_keeps_its_split() -> None:
    from training.recipes.covid_compare import rows_of_split
    from training.recipes.covid_manifests import nih_finding_rows

    rows = [_row("nih_cxr14", []), _row("nih_cxr14", ["Pneumonia"]), _row("ieee8023", ["COVID-19"]),
            _row("openist", [])]
    for r, split in zip(rows, ["train", "test", "train", "validation"], strict=True):
        r.covid, r.split = "0" if r.dataset != "ieee8023" else "1", split
    out = nih_finding_rows(rows)
    assert [(r.covid, r.split) for r in out] == [("0", "train"), ("1", "test")]
    assert rows[1].covid == "0"  # the multi-source rows keep their COVID-19 label
    joined = rows_of_split(rows, "train+validation")
    assert [r.dataset for r in joined] == ["nih_cxr14", "ieee8023", "openist"]
    assert rows_of_split(rows, "test") == [rows[1]]
