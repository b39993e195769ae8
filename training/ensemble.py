"""Average independently trained runs into one bundle (lungs 1.3.0: four U-Nets; covid 2.1.0: five folds).

The ensemble's network is :class:`pipelines.networks.MeanEnsemble` (mean of the members' probabilities:
per image for a classifier, per pixel for a segmenter; one Grad-CAM per member for COVID-19) and it is
exported by the trainer's own :func:`training.export.export_torch_bundle`: threshold chosen on the
ensemble's validation outputs by the task's usual method, validation and test reports, model card.
Nothing here reads the test split to choose.

Why an ensemble: on these small validation splits one run's figures move with the seed, so picking
one run by validation mostly picks noise; averaging runs lowers that variance without a choice.

Members must share task, data, input, model, train and threshold settings (and lungs bundle): they
differ only by seed. With ``mixed_recipes`` they may differ in data, model and train settings, but
must have the same validation and test images (lungs 1.3.0 mixes two recipes); with ``mixed_splits``
as well, a member may have another split of the same images, provided it never trained on the
ensemble's test images (its overlap with the validation images is recorded).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.bundle import load_bundle
from pipelines.networks import MeanEnsemble
from training.config import RunConfig
from training.data import prepare_rows
from training.distributed import DistContext
from training.errors import TrainingError
from training.export import export_torch_bundle
from training.inputs import input_spec_dict, lung_masks_for, run_cache
from training.losses import build_loss
from training.manifest import manifest_shas
from training.tasks import TASK_SPECS
from training.trained import TrainedModel
from training.trainers import covid
from training.validation import default_selection

MATCHING_FIELDS = ("task", "lung_bundle")


COMBINATION = {
    "classification": "mean of the members' P(positive); Grad-CAM: mean of the members' maps",
    "segmentation": "mean of the members' per-pixel P(foreground), then the ensemble's own threshold",
}


@dataclass(frozen=True)
class MemberSource:
    """Where a member's network comes from: a bundle, or member ``index`` of a mean-ensemble bundle."""

    bundle: Path
    index: int | None = None


def member_source(cfg: RunConfig, overrides: dict[str, MemberSource] | None = None) -> MemberSource:
    key = str(Path(cfg.source_file).resolve())
    if overrides and key in overrides:
        return overrides[key]
    return MemberSource(cfg.run_dir / "bundles" / cfg.name)


def parse_member_bundles(items: list[str]) -> dict[str, MemberSource]:
    """``CONFIG=DIR`` (a bundle) or ``CONFIG1,CONFIG2,...=DIR`` (the members of a mean-ensemble bundle)."""
    sources: dict[str, MemberSource] = {}
    for item in items:
        configs, sep, folder = item.partition("=")
        if not sep or not configs or not folder:
            raise ValueError(f"--member-bundle {item!r}: expected CONFIG=DIR or CONFIG,CONFIG,...=DIR")
        names = configs.split(",")
        for i, config in enumerate(names):
            index = i if len(names) > 1 else None
            sources[str(Path(config).resolve())] = MemberSource(Path(folder), index)
    return sources


def check_members(cfgs: list[RunConfig], mixed_recipes: bool = False) -> None:
    """Members may differ by name, version, seed and description only ([data], [model] and [train]
    too with ``mixed_recipes``; their evaluated images are checked in :func:`build_ensemble`)."""
    first = cfgs[0]
    parts = ("input", "threshold") if mixed_recipes else ("data", "model", "input", "train", "threshold")
    for cfg in cfgs[1:]:
        for name in MATCHING_FIELDS:
            if getattr(cfg, name) != getattr(first, name):
                raise TrainingError(f"{cfg.source_file}: {name} differs from {first.source_file}")
        for part in parts:
            if getattr(cfg, part) != getattr(first, part):
                raise TrainingError(f"{cfg.source_file}: [{part}] differs from {first.source_file}")
    if first.task == "ggo_detection":
        raise TrainingError(f"{first.source_file}: YOLO detectors are not averaged by this recipe")
    # Two runs of one recipe with one seed are one model twice; runs of different recipes may share a seed.
    runs = {json.dumps([c.seed, *(asdict(getattr(c, part)) for part in ("data", "model", "train"))],
                       sort_keys=True, default=str) for c in cfgs}
    if len(runs) != len(cfgs):
        raise TrainingError("ensemble members must have distinct seeds (or, with mixed recipes, recipes)")


def _evaluated_images(rows: list) -> list[tuple[str, str]]:
    return sorted((r.image_path, r.split) for r in rows if r.split in ("validation", "test"))


def export_mean_ensemble(
    cfg: RunConfig,
    networks: list,
    definitions: list[dict],
    epochs: list[int],
    rows: list,
    manifest_sha: str,
) -> Path:
    """Average trained networks (frozen) into one MeanEnsemble and export it as ``cfg``'s run bundle.

    Shared by seeded ensembles (below) and cross-validation fold ensembles (:mod:`training.crossval`).
    The members' own trainer's loss and epoch rule are used (covid brings its own), so the ensemble's
    validation figures are computed exactly as each member's were.
    """
    spec = TASK_SPECS[cfg.task]
    for network in networks:
        for p in network.parameters():
            p.requires_grad_(False)
    net = MeanEnsemble(networks).eval()
    definition = {"_target_": "pipelines.networks.mean_ensemble", "members": definitions}
    device = next(net.parameters()).device.type
    trained = TrainedModel(
        spec=spec,
        net=net,
        definition=definition,
        best_epoch=epochs,
        in_spec=input_spec_dict(cfg, spec),
        rows=rows,
        manifest_sha=manifest_sha,
        cache=run_cache(cfg),
        lung_masks=lung_masks_for(cfg, spec, rows),
        loss_fn=build_loss(cfg, spec, [r for r in rows if r.split == "train"], device),
        selection=covid.select if spec.task == "covid" else default_selection(spec),
    )
    return export_torch_bundle(cfg, trained)


def split_overlap(member_rows: list, ensemble_rows: list) -> dict[str, int]:
    """How many of the ensemble's validation and test images a member trained on."""
    trained = {r.image_path for r in member_rows if r.split == "train"}
    return {split: sum(1 for r in ensemble_rows if r.split == split and r.image_path in trained)
            for split in ("validation", "test")}


def build_ensemble(
    cfgs: list[RunConfig],
    name: str,
    version: str,
    description: str,
    member_bundles: dict[str, MemberSource] | None = None,
    mixed_recipes: bool = False,
    mixed_splits: bool = False,
) -> Path:
    """Load the member bundles, average them, and export the ensemble bundle under runs/<name>."""
    spec = TASK_SPECS[cfgs[0].task]
    sources = [member_source(c, member_bundles) for c in cfgs]
    bundles = dict.fromkeys(src.bundle for src in sources)  # the members of an ensemble bundle share it
    loaded = {bundle: load_bundle(bundle, spec.task) for bundle in bundles}
    members = [loaded[src.bundle] for src in sources]
    networks, definitions, epochs = [], [], []
    for src, b in zip(sources, members, strict=True):
        best = b.metadata.metrics.get("best_epoch", -1)
        if src.index is None:
            networks.append(b.network)
            definitions.append(b.metadata.network_def)
            epochs.append(int(best))
            continue
        if not isinstance(b.network, MeanEnsemble) or src.index >= len(b.network.members):
            raise TrainingError(f"{src.bundle}: has no ensemble member {src.index}")
        networks.append(b.network.members[src.index])
        definitions.append(b.metadata.network_def["members"][src.index])
        epochs.append(int(best[src.index]) if isinstance(best, list) else -1)
    cfg = copy.deepcopy(cfgs[0])
    cfg.name, cfg.version, cfg.description = name, version, description
    cfg.seed = 0
    ctx = DistContext()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    # The first member's manifest (copied, so the ensemble's run folder is self-contained); without a
    # run folder (a shipped member) the config rebuilds it, and the sha check below proves it the same.
    for c in cfgs:
        if (c.run_dir / "manifest.csv").is_file():
            (cfg.run_dir / "manifest.csv").write_bytes((c.run_dir / "manifest.csv").read_bytes())
            break
    rows, _path, manifest_sha = prepare_rows(cfg, spec, ctx)
    overlaps: list[dict[str, int] | None] = []
    for b, c in zip(members, cfgs, strict=True):
        overlaps.append(None)
        if not mixed_recipes:
            if b.metadata.manifest_sha256 != manifest_sha:
                raise TrainingError(f"{c.name}: trained on another manifest than {manifest_sha[:12]}")
            continue
        own_rows, own_path, _own_sha = prepare_rows(c, spec, ctx)
        if b.metadata.manifest_sha256 not in manifest_shas(own_path):
            raise TrainingError(f"{c.name}: its bundle was trained on another manifest than its config's")
        if mixed_splits:
            overlaps[-1] = split_overlap(own_rows, rows)
            if overlaps[-1]["test"]:
                raise TrainingError(
                    f"{c.name}: trained on {overlaps[-1]['test']} of {cfg.name}'s test images")
            if overlaps[-1]["validation"]:
                logging.warning("%s: trained on %d of the ensemble's validation images", c.name,
                                overlaps[-1]["validation"])
        elif _evaluated_images(own_rows) != _evaluated_images(rows):
            raise TrainingError(f"{c.name}: its validation/test images differ from {cfg.name}'s")
    bundle = export_mean_ensemble(cfg, networks, definitions, epochs, rows, manifest_sha)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["ensemble"] = {
        "combination": COMBINATION[spec.kind],
        "members": [
            {"name": b.metadata.name, "version": b.metadata.version, "seed": c.seed, "config": c.source_file,
             "best_epoch": epoch,
             "validation_selection_value": None if src.index is not None
             else b.metadata.metrics.get("selection_value"),
             "weights_sha256": b.metadata.weights.get("sha256"),
             **({} if src.index is None else {"member_of_ensemble_bundle": src.index}),
             **({} if overlap is None else {"trained_on_validation_images": overlap["validation"]})}
            for b, c, src, epoch, overlap in zip(members, cfgs, sources, epochs, overlaps, strict=True)
        ],
    }
    meta_path.write_text(json.dumps(meta, indent=2, default=float) + "\n", encoding="utf-8")
    return bundle


