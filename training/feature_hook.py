"""The input of a network's last ``nn.Linear`` (its penultimate features), caught by a forward hook.

Why: the training-only heads (source adversary, "any finding" head) read the classifier's features
without changing the network, so the exported bundle is the plain classifier once the hook is removed.
"""

from __future__ import annotations

import torch
from torch import nn

from training.errors import ConfigError


class PenultimateFeatures:
    """Keeps the features of the latest forward pass until :meth:`take` hands them over."""

    def __init__(self, net: nn.Module, option: str) -> None:
        last = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not last:
            raise ConfigError(f"{option} needs a network whose output layer is nn.Linear")
        self.layer = last[-1]
        self.size = self.layer.in_features
        self._features: torch.Tensor | None = None
        self._hook = self.layer.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        self._features = inputs[0]

    def take(self, caller: str) -> torch.Tensor:
        """The latest forward pass's features, once (a second call needs a new forward pass)."""
        if self._features is None:
            raise RuntimeError(f"{caller} called before a forward pass of the network")
        features, self._features = self._features, None
        return features

    def remove(self) -> None:
        self._hook.remove()
