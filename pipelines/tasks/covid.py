"""Task 3, COVID-19: probability, a call at the bundle's operating threshold, and a Grad-CAM heatmap.

Input mode comes from the bundle (``whole_image`` or ``lungs_only``, the reference paper's two
settings); lungs-only input is built from the lung mask by :func:`pipelines.preprocess.prepare_input`,
exactly as in training. Grad-CAM (``monai.visualize.GradCAM`` on the bundle's ``target_layer``) needs
gradients, so this one forward/backward runs outside ``inference_mode``, in float32; the same
forward pass gives the probability (a forward hook keeps the logits), so the network runs once.
The heatmap is scaled to [0, 1] per image (MONAI's default normaliser flips it) and mapped back to
the source grid; outside the lungs-only crop it is 0. A bundle that carries its own lungs bundle
(``input_lungs/``) gets its input masks from it (:attr:`CovidClassifier.input_lungs`), so the input
stays the one it was trained on when the pipeline's lung model changes. An ensemble bundle
(``mean_ensemble``) runs Grad-CAM once per member and averages the maps; its probability is the mean
of the members'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from pipelines.bundle import LoadedBundle
from pipelines.errors import BundleError
from pipelines.networks import DEFAULT_TARGET_LAYERS, MeanEnsemble
from pipelines.preprocess import prepare_input
from pipelines.results import CovidResult, SourceImage
from pipelines.runtime import positive_probability, stack
from pipelines.tasks.lungs import LungSegmenter

log = logging.getLogger(__name__)


def _unit_scale(cam: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1] (a flat map becomes 0)."""
    flat = cam.reshape(cam.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, *[1] * (cam.ndim - 1))
    high = flat.max(dim=1).values.view(-1, *[1] * (cam.ndim - 1))
    span = high - low
    return torch.where(span > 1e-12, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))


class CovidClassifier:
    def __init__(self, bundle: LoadedBundle) -> None:
        from monai.visualize import GradCAM

        self.bundle = bundle
        self.spec = bundle.metadata.input
        self.threshold = float(bundle.metadata.operating_threshold)
        # The lung model this classifier was trained with (bundle's input_lungs/), if it carries one:
        # its masks, not the pipeline's, cut the lungs-only input.
        self.input_lungs = LungSegmenter(bundle.input_lungs) if bundle.input_lungs is not None else None
        net = bundle.network
        # An ensemble bundle (pipelines.networks.MeanEnsemble) gets one Grad-CAM per member, on the
        # member's own target layer; the heatmap is their mean, the probability the ensemble's.
        self.members = list(net.members) if isinstance(net, MeanEnsemble) else [net]
        layer = bundle.metadata.target_layer or DEFAULT_TARGET_LAYERS.get(bundle.metadata.architecture)
        if layer is None or any(layer not in dict(m.named_modules()) for m in self.members):
            raise BundleError(f"{bundle.path}: Grad-CAM target layer {layer!r} not found in the network")
        self.target_layer = layer
        self._logits: list[torch.Tensor] = []
        for member in self.members:
            member.register_forward_hook(lambda _m, _i, out: self._logits.append(out.detach()))
        self.cams = [GradCAM(nn_module=m, target_layers=layer, postprocessing=_unit_scale)
                     for m in self.members]
        # Grad-CAM of the COVID logit: the only one when there is one, index 1 of two (softmax).
        probe = torch.zeros((1, self.spec.channels, self.spec.size, self.spec.size), device=bundle.device)
        with torch.inference_mode():
            width = int(net(probe).reshape(1, -1).shape[1])
        self._logits.clear()
        if width not in (1, 2):
            raise BundleError(f"{bundle.path}: a COVID classifier must output 1 or 2 logits, not {width}")
        self.class_idx = 0 if width == 1 else 1

    @property
    def input_mode(self) -> str:
        return self.spec.mode

    @property
    def needs_lungs(self) -> bool:
        return self.spec.mode == "lungs_only"

    def predict(
        self, images: Sequence[SourceImage], lung_masks: Sequence[np.ndarray | None]
    ) -> list[CovidResult]:
        """One result per image; raises EmptyLungMaskError for lungs-only input without lungs.

        ``lung_masks`` must come from :attr:`input_lungs` when the bundle carries one (the chest
        pipeline does this): the result names that model as the mask's maker.
        """
        if not images:
            return []
        prepared = [prepare_input(im.pixels, self.spec, m) for im, m in zip(images, lung_masks, strict=True)]
        batch = stack([p.array for p in prepared], self.bundle.device)
        member_cams, member_logits = [], []
        for cam in self.cams:
            self._logits.clear()
            with torch.inference_mode(False), torch.enable_grad():
                member_cams.append(cam(batch.clone(), class_idx=self.class_idx)[:, 0].detach().cpu())
            member_logits.append(self._logits[-1])
        self._logits.clear()
        self.bundle.network.zero_grad(set_to_none=True)
        if len(self.members) == 1:
            cams, logits = member_cams[0], member_logits[0]
        else:
            cams = _unit_scale(torch.stack(member_cams).mean(dim=0))
            logits = MeanEnsemble.combine(member_logits)
        probs = positive_probability(logits).cpu().tolist()
        results = []
        own_lungs = self.input_lungs.bundle.info if self.input_lungs is not None else None
        for prep, prob, cam, mask in zip(prepared, probs, cams, lung_masks, strict=True):
            results.append(CovidResult(
                probability=float(prob),
                positive=bool(prob >= self.threshold),
                threshold=self.threshold,
                input_mode=self.spec.mode,
                heatmap=np.clip(prep.geometry.to_source(cam), 0.0, 1.0),
                model=self.bundle.info,
                input_mask=mask if self.needs_lungs else None,
                input_lung_model=own_lungs if self.needs_lungs else None,
            ))
        return results
