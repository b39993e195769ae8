"""Tiny randomly initialised bundles for plumbing tests and benchmarks (never for reading images).

:func:`write_random_bundles` writes one bundle per task that loads and runs in well under a second
per image on CPU: small networks at 64 px. Their outputs are meaningless, but shaped exactly like a
real model's, and a few biases are set so that every stage has something to do: the projection
model calls everything frontal (or lateral, on request), the lung model marks most of the image,
the GGO models find some boxes and some mask. Tests of the node and of the result writers use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pipelines import networks
from pipelines.bundle import BundleMetadata, save_bundle
from pipelines.preprocess import InputSpec

RANDOM_VERSION = "0.0.0-random"
SIZE = 64
_CARD = """# {name} (random weights)

Randomly initialised {architecture} for the `{task}` task, written by
`pipelines.testing.write_random_bundles` for plumbing tests and benchmarks.
Its outputs mean nothing. Research use only; not for diagnosis.
"""


def _last_conv_bias(net: nn.Module) -> torch.Tensor:
    """The bias of the network's output convolution (set to steer a random network's output)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    bias = convs[-1].bias
    if bias is None:
        raise ValueError(f"the last convolution of {type(net).__name__} has no bias")
    return bias


def _save(models_dir: Path, name: str, task: str, architecture: str, definition: dict, spec: InputSpec,
          labels: list[str], threshold: float, weights: dict | Path, target_layer: str | None = None) -> None:
    metadata = BundleMetadata(
        name=name, version=RANDOM_VERSION, task=task, architecture=architecture, network_def=definition,
        input=spec, labels=labels, operating_threshold=threshold,
        threshold_method="fixed for random test bundles", description="random weights for tests",
        target_layer=target_layer, metrics={}, training_data={"note": "none: random initialisation"},
    )
    card = _CARD.format(name=name, architecture=architecture, task=task)
    save_bundle(models_dir / name, metadata, weights, card)


def write_random_bundles(
    models_dir: Path | str,
    seed: int = 0,
    *,
    lateral: bool = False,
    covid_architecture: str = "vgg16",
    covid_mode: str = "lungs_only",
    state_dir: Path | str | None = None,
    realistic: bool = False,
) -> None:
    """Write five tiny random bundles under ``models_dir`` (one folder per task).

    ``lateral=True`` makes the projection model call every image lateral (tests of the stop rule);
    ``covid_architecture`` is any classifier of :mod:`pipelines.networks` (tiny widths);
    ``covid_mode`` is "lungs_only" or "whole_image". ``realistic=True`` writes full-size networks at
    production input sizes instead (ResNet18 224 px, UNet 16-256 at 256 px, VGG16 224 px, YOLO11n
    512 px): still random, but as slow as real models, for bench/pipeline.py.
    """
    models_dir = Path(models_dir)
    torch.manual_seed(seed)
    if realistic:
        sizes = {"projection": 224, "lungs": 256, "covid": 224, "ggo_segmentation": 256, "ggo_detection": 512}
        width: dict[str, int] = {}
        unet_kwargs: dict = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
    else:
        sizes = dict.fromkeys(("projection", "lungs", "covid", "ggo_segmentation", "ggo_detection"), SIZE)
        width = {"width": 8}
        unet_kwargs = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}
    whole = InputSpec(size=sizes["projection"], mode="whole_image")

    proj = networks.resnet(depth=18, **width)  # = build_network("resnet18"), typed
    with torch.no_grad():  # every image frontal (or lateral): the chain runs (or stops) deterministically
        proj.fc.weight.mul_(0.01)
        proj.fc.bias.fill_(6.0 if lateral else -6.0)
    _save(models_dir, "random-projection", "projection", "resnet18",
          networks.network_def("resnet18", **width), whole, ["frontal", "lateral"], 0.5,
          proj.state_dict(), "layer4")

    unet_def = networks.network_def("unet", **unet_kwargs)
    lungs = networks.build_network("unet", **unet_kwargs)
    with torch.no_grad():  # mostly foreground, so lungs-only COVID input has lungs to crop to
        _last_conv_bias(lungs).fill_(3.0)
    _save(models_dir, "random-lungs", "lungs", "unet", unet_def, InputSpec(size=sizes["lungs"]),
          ["background", "lung"], 0.5, lungs.state_dict())

    kwargs = width if covid_architecture.startswith(("vgg", "resnet")) else {}
    covid = networks.build_network(covid_architecture, **kwargs)
    _save(models_dir, "random-covid", "covid", covid_architecture,
          networks.network_def(covid_architecture, **kwargs),
          InputSpec(size=sizes["covid"], mode=covid_mode),  # type: ignore[arg-type]
          ["negative", "covid19"], 0.5,
          covid.state_dict(), networks.DEFAULT_TARGET_LAYERS[covid_architecture])

    ggo_seg = networks.build_network("unet", **unet_kwargs)
    with torch.no_grad():
        _last_conv_bias(ggo_seg).fill_(-0.2)
    _save(models_dir, "random-ggo-segmentation", "ggo_segmentation", "unet", unet_def,
          InputSpec(size=sizes["ggo_segmentation"]), ["background", "ggo"], 0.5, ggo_seg.state_dict())

    yolo = networks.yolo_model("yolo11n.yaml", num_classes=1, state_dir=state_dir)
    with torch.no_grad():  # class logits near 0 instead of ultralytics' prior: some boxes pass 0.25
        # DetectionModel.model is its nn.Sequential of layers (unannotated in ultralytics); the last is the
        # Detect head, whose cv3 holds one class branch per scale ending in a Conv2d.
        detect: Any = cast(nn.Sequential, yolo.model)[-1]
        for branch in detect.cv3:
            branch[-1].bias.fill_(-1.0)
    checkpoint = models_dir / ".random-yolo.pt"
    networks.save_yolo_checkpoint(yolo, checkpoint, imgsz=sizes["ggo_detection"], names=["ggo"])
    _save(models_dir, "random-ggo-detection", "ggo_detection", "yolo",
          networks.network_def("yolo", cfg="yolo11n.yaml", num_classes=1),
          InputSpec(size=sizes["ggo_detection"], normalization="unit", channels=3), ["ggo"], 0.25, checkpoint)
    checkpoint.unlink()
