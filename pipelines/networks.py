"""Network factories named in bundle metadata (``network_def._target_``).

Every factory builds a randomly initialised network (no hub weights: nothing may download), takes
plain keyword arguments so that a bundle's ``network_def`` can be instantiated by
``monai.bundle.ConfigParser``, and returns logits. Conventions:

- classifiers output (N, num_classes) logits; a single logit means sigmoid = P(labels[1]);
- segmenters output (N, out_channels, H, W) logits; one channel means sigmoid = P(foreground);
- input is one grey channel (``in_channels=1``); grey repeated to 3 channels also works
  (``in_channels=3``, InputSpec.channels=3).

VGG16/VGG19 are the reference paper's models; DenseNet121 (MONAI) and ResNet (torchvision) are the
lighter backbones. YOLO detectors are ultralytics models built from a yaml (see :func:`yolo_model`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # imported where used: torchvision, MONAI and ultralytics load only when needed
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
    from ultralytics.nn.tasks import DetectionModel

# VGG configurations of Simonyan & Zisserman (torchvision's "D" and "E"): channel counts at
# width 64, "M" = max-pool.
_VGG_CFG: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

# Grad-CAM target layer per architecture (the last convolutional block's activation).
DEFAULT_TARGET_LAYERS: dict[str, str] = {
    "vgg16": "features.29",
    "vgg19": "features.35",
    "vgg16_bn": "features.42",
    "vgg19_bn": "features.51",
    "densenet121": "class_layers.relu",
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
}

ARCHITECTURES = (
    "vgg16", "vgg19", "vgg16_bn", "vgg19_bn", "densenet121", "resnet18", "resnet34", "resnet50", "unet",
    "yolo",
)


class VGGClassifier(nn.Module):
    """VGG feature extractor with a global-average-pool head.

    ``features`` has torchvision's layer layout (so ``features.29`` is VGG16's last ReLU and, at
    width 64 with 3 input channels, torchvision's ImageNet ``features`` weights would load), but the
    three 4096-wide fully connected layers are replaced by pooling + dropout + one linear layer:
    the paper-style head for a small binary task, 120 M parameters lighter.
    """

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def vgg(
    depth: int = 16,
    in_channels: int = 1,
    num_classes: int = 1,
    width: int = 64,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> VGGClassifier:
    """VGG16 or VGG19 (``depth``); ``width`` scales every layer (64 = the original widths).

    ``batch_norm`` gives torchvision's ``vgg16_bn`` / ``vgg19_bn`` layout (a BatchNorm after every
    convolution): the paper's VGGs started from ImageNet weights, which cannot be downloaded here, and
    the plain VGG16 did not train from random initialisation on our data; batch norm is
    the usual way to train a VGG from scratch.
    """
    if depth not in _VGG_CFG:
        raise ValueError(f"VGG depth must be 16 or 19, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _VGG_CFG[depth]:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = max(1, int(item) * width // 64)
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=False))
            channels = out
    net = VGGClassifier(nn.Sequential(*layers), channels, num_classes, dropout)
    for m in net.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return net


def densenet121(in_channels: int = 1, num_classes: int = 1, dropout: float = 0.0) -> nn.Module:
    """MONAI's 2-D DenseNet121 (Grad-CAM target ``class_layers.relu``)."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(
        spatial_dims=2, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout
    )


def resnet(depth: int = 18, in_channels: int = 1, num_classes: int = 1, width: int = 64) -> ResNet:
    """torchvision ResNet-18/34/50 (weights=None) with its stem adapted to ``in_channels``.

    ``width`` (the stem width, 64 originally) is there for tiny test networks.
    """
    from torchvision.models import resnet as tv_resnet

    blocks: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
        18: (tv_resnet.BasicBlock, [2, 2, 2, 2]),
        34: (tv_resnet.BasicBlock, [3, 4, 6, 3]),
        50: (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    }
    if depth not in blocks:
        raise ValueError(f"ResNet depth must be 18, 34 or 50, got {depth}")
    block, layers = blocks[depth]
    net = tv_resnet.ResNet(block, layers, num_classes=num_classes, width_per_group=64)
    if width != 64 or in_channels != 3:
        _narrow_resnet(net, block, layers, in_channels, width, num_classes)
    return net


def _narrow_resnet(net: ResNet, block: type[BasicBlock | Bottleneck], layers: list[int], in_channels: int,
                   width: int, num_classes: int) -> None:
    """Rebuild the stem and stages of a torchvision ResNet at another width / input channel count."""
    net.inplanes = width
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
    net.fc = nn.Linear(width * 8 * block.expansion, num_classes)


def unet(
    in_channels: int = 1,
    out_channels: int = 1,
    channels: tuple[int, ...] | list[int] = (16, 32, 64, 128, 256),
    strides: tuple[int, ...] | list[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    dropout: float = 0.0,
    aux_heads: int = 0,
) -> nn.Module:
    """MONAI 2-D UNet (lungs, GGO segmentation); the data README's lung U-Net is the default.

    ``aux_heads``: extra output channels trained on masks of other conventions (see
    ``[data] aux_mask_datasets`` in training); the network then serves only the first
    ``out_channels`` in evaluation mode, so pipelines read it like any other U-Net.
    """
    from monai.networks.nets import UNet

    kwargs: dict[str, Any] = dict(spatial_dims=2, in_channels=in_channels, channels=tuple(channels),
                                  strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)
    if aux_heads:
        return _aux_heads_unet_class()(served=out_channels, out_channels=out_channels + aux_heads, **kwargs)
    return UNet(out_channels=out_channels, **kwargs)


@functools.cache
def _aux_heads_unet_class() -> type:
    """Built on first use: MONAI is imported lazily in this module."""
    from monai.networks.nets import UNet

    class AuxHeadsUNet(UNet):
        """A UNet whose last ``out_channels - served`` channels exist for training only (like MONAI's
        DynUNet deep supervision): train mode returns them all, eval mode the first ``served``. The
        state_dict is a plain UNet's with ``out_channels`` outputs."""

        def __init__(self, *, served: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.served = served

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            return out if self.training else out[:, : self.served]

    return AuxHeadsUNet


class MeanEnsemble(nn.Module):
    """Several networks of one task (classifiers or segmenters) whose probabilities are averaged.

    Why: on small, noisy splits one network's ranking moves by several AUC points with its seed
    (seen on the covid candidates); the mean of independently seeded members is steadier and no member
    has to be picked on a small validation split. The output is still logits under the convention
    above, so everything that reads a network of the task reads an ensemble unchanged. The class
    axis is dim 1 of each member's output ((B, C) or (B, C, H, W)): one channel gives
    ``logit(mean(sigmoid))``, several give ``log(mean(softmax))`` (log-probabilities are logits of a
    softmax). ``members`` is a ModuleList, so Grad-CAM can run per member (``members.<i>.<layer>``).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @staticmethod
    def combine(member_logits: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([t.float() for t in member_logits])  # (members, B, C, ...)
        if stacked.ndim == 2 or stacked.shape[2] == 1:
            p = torch.sigmoid(stacked).mean(dim=0).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        return torch.log(torch.softmax(stacked, dim=2).mean(dim=0).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([member(x) for member in self.members])


def mean_ensemble(members: list[nn.Module]) -> nn.Module:
    """``network_def`` factory: ``{"_target_": "pipelines.networks.mean_ensemble", "members": [defs]}``
    (MONAI's ConfigParser instantiates each member's own ``_target_`` first)."""
    return MeanEnsemble(list(members))


def network_def(architecture: str, **kwargs: Any) -> dict[str, Any]:
    """The bundle ``network_def`` for an architecture name, e.g. ``network_def("vgg16", num_classes=1)``."""
    if architecture in ("vgg16", "vgg19"):
        return {"_target_": "pipelines.networks.vgg", "depth": int(architecture[3:]), **kwargs}
    if architecture in ("vgg16_bn", "vgg19_bn"):
        depth = int(architecture[3:5])
        return {"_target_": "pipelines.networks.vgg", "depth": depth, "batch_norm": True, **kwargs}
    if architecture == "densenet121":
        return {"_target_": "pipelines.networks.densenet121", **kwargs}
    if architecture in ("resnet18", "resnet34", "resnet50"):
        return {"_target_": "pipelines.networks.resnet", "depth": int(architecture[6:]), **kwargs}
    if architecture == "unet":
        return {"_target_": "pipelines.networks.unet", **kwargs}
    if architecture == "yolo":
        return {"_target_": "pipelines.networks.yolo_model", **kwargs}
    raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")


def build_network(architecture: str, **kwargs: Any) -> nn.Module:
    """Instantiate an architecture by name (training); inference instantiates ``network_def`` instead."""
    definition = network_def(architecture, **kwargs)
    target = definition.pop("_target_").rsplit(".", 1)[1]
    return globals()[target](**definition)


# -- YOLO (ultralytics) ---------------------------------------------------------------------------
def yolo_model(
    cfg: str = "yolo11n.yaml", num_classes: int = 1, state_dir: str | Path | None = None
) -> DetectionModel:
    """A randomly initialised ultralytics ``DetectionModel`` from a model yaml (never a hub ``.pt``)."""
    from pipelines.yolo_env import prepare_ultralytics

    prepare_ultralytics(state_dir)
    from ultralytics.nn.tasks import DetectionModel

    if cfg.endswith(".pt"):
        raise ValueError(f"YOLO models are built from a yaml, not a hub checkpoint: {cfg}")
    return DetectionModel(cfg, ch=3, nc=num_classes, verbose=False)


def save_yolo_checkpoint(model: DetectionModel, path: Path | str, imgsz: int, names: list[str]) -> Path:
    """Write ``model`` as an ultralytics checkpoint (``{"model", "train_args"}``) for ``YOLO(path)``."""
    import copy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).float().eval()
    net.names = dict(enumerate(names))
    for p in net.parameters():
        p.requires_grad_(False)
    torch.save({"model": net, "train_args": {"imgsz": imgsz, "task": "detect"}, "date": None}, path)
    return path
