"""Average independently seeded runs of one recipe into one bundle (issue 6: covid, lungs).

    .venv/bin/python -m training.recipes.ensemble CONFIG [CONFIG ...] --name NAME --version V \
        [--train] [--member-bundle CONFIG=BUNDLE_DIR ...]

Each config is an ordinary ``cxr-node train`` run (the members may be trained in parallel beforehand;
``--train`` trains, one after the other, every member whose bundle is missing). A member's bundle is
``runs/<name>/bundles/<name>`` unless ``--member-bundle`` names another folder (e.g. a shipped bundle in
``models/``: its sha-checked weights are used as they are). ``--member-bundle A.toml,B.toml=DIR`` takes
the members of a mean-ensemble bundle (e.g. a shipped one whose member runs are gone) for configs A and B,
in order, so a shipped ensemble can grow by one seed. The members must share task, data, input, model,
train and threshold settings (and lungs bundle): they differ only by seed. Every member's
``manifest_sha256`` must equal the ensemble's split manifest (the first member's run manifest, or the
one the config rebuilds), so all were trained and selected on the same split.

``--mixed-recipes`` drops the "only the seed differs" rule for [data], [model] and [train] (e.g. a member
trained with ``[data] aux_mask_datasets``): each member's manifest must then be its own config's, and
every member must have exactly the ensemble's validation and test images, so the ensemble is still
selected and tested on the images each member was.

``--mixed-splits`` (with ``--mixed-recipes``) admits a member trained on another split of the same images
(e.g. a shipped bundle next to a candidate trained on a larger manifest): the ensemble's split is the first
member's, and a member may not have trained on any of its test images (refused); the ensemble's validation
images a member trained on are counted in the metadata (``trained_on_validation_images``), since its
validation figures are then partly in-sample for that member.

The ensemble's network is :class:`pipelines.networks.MeanEnsemble` (mean of the members' probabilities:
per image for a classifier, per pixel for a segmenter; one Grad-CAM per member for COVID-19) and it is
exported by the trainer's own :func:`training.export.export_torch_bundle`: threshold chosen on the
ensemble's validation outputs by the task's usual method, validation and test reports, model card.
Nothing here reads the test split to choose; the ship rules live in the member configs (or, for the
session-3 covid candidate, below).

Why an ensemble: the session-2 covid candidates' validation score moved by +-0.05 between epochs and
seeds on these small splits (17 ieee8023 non-COVID validation images), so picking one run by validation
mostly picks noise. Averaging seeds lowers that variance without any choice on validation.

Session-3 covid rule, written before any member was trained: ship the ensemble of members m2..m5
(the covid 2.0.0 recipe, seeds 20260102..20260105) as covid 2.1.0 if its VALIDATION selection score
(``training.trainers.covid.select``: mean of the within-ieee8023 AUC and the ieee8023 COVID-19 vs
held-out OpenIST normals AUC) is >= 0.835, i.e. 2.0.0's 0.845 minus 0.01 (2.0.0 was the best of five
candidates on this same split, so its own score carries a winner's bias). Otherwise it is reported in
the covid card and not shipped. Members that failed to train are left out (at least three are needed);
no member is dropped for its figures. (Outcome: 0.833, not shipped.)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from training.config import RunConfig
from training.errors import TrainingError

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


def _member_source(cfg: RunConfig, overrides: dict[str, MemberSource] | None = None) -> MemberSource:
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

    Shared by seeded ensembles (below) and cross-validation fold ensembles (``recipes/crossval.py``).
    The members' own trainer's loss and epoch rule are used (covid brings its own), so the ensemble's
    validation figures are computed exactly as each member's were.
    """
    from pipelines.networks import MeanEnsemble
    from training.cache import ArrayCache
    from training.export import export_torch_bundle
    from training.tasks import TASK_SPECS
    from training.trainers import covid
    from training.trainers.loop import build_loss, default_selection, input_spec_dict, lung_masks_for

    spec = TASK_SPECS[cfg.task]
    for network in networks:
        for p in network.parameters():
            p.requires_grad_(False)
    net = MeanEnsemble(networks).eval()
    definition = {"_target_": "pipelines.networks.mean_ensemble", "members": definitions}
    in_spec = input_spec_dict(cfg, spec)
    cache = ArrayCache(cfg.data.cache_dir or cfg.run_dir.parent / "cache")
    lung_masks = lung_masks_for(cfg, spec, rows, in_spec)
    selection = covid.select if spec.task == "covid" else default_selection(cfg, spec)
    device = next(net.parameters()).device.type
    loss_fn = build_loss(cfg, spec, [r for r in rows if r.split == "train"], device)
    return export_torch_bundle(
        cfg, spec, net, definition, in_spec, rows, manifest_sha, cache,
        best_epoch=epochs, lung_masks=lung_masks, loss_fn=loss_fn, selection=selection,
    )


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
    from pipelines.bundle import load_bundle
    from pipelines.networks import MeanEnsemble
    from training.data import prepare_rows
    from training.distributed import DistContext
    from training.manifest import manifest_shas
    from training.tasks import TASK_SPECS

    spec = TASK_SPECS[cfgs[0].task]
    sources = [_member_source(c, member_bundles) for c in cfgs]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="member run configs (TOML)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--description", default="", help="default: the first member's, marked 'mean of N'")
    parser.add_argument("--member-bundle", action="append", default=[], metavar="CONFIG=DIR",
                        help="take this member's bundle from DIR (e.g. a shipped bundle) instead of its run; "
                             "CONFIG1,CONFIG2=DIR: the members of the mean-ensemble bundle DIR, in order")
    parser.add_argument("--mixed-recipes", action="store_true",
                        help="members may differ in [data], [model] and [train] "
                             "(they must have the same validation and test images)")
    parser.add_argument("--mixed-splits", action="store_true",
                        help="with --mixed-recipes: members may have other splits; none may have trained on "
                             "the ensemble's (first member's) test images")
    parser.add_argument("--train", action="store_true", help="train members whose bundle is missing")
    parser.add_argument("--min-members", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.config import load_config
    from training.run import train_from_config

    if args.mixed_splits and not args.mixed_recipes:
        parser.error("--mixed-splits needs --mixed-recipes")
    cfgs = [load_config(p) for p in args.configs]
    check_members(cfgs, args.mixed_recipes)
    try:
        overrides = parse_member_bundles(args.member_bundle)
    except ValueError as exc:
        parser.error(str(exc))
    ready = []
    for cfg in cfgs:
        if not (_member_source(cfg, overrides).bundle / "configs" / "metadata.json").is_file():
            if not args.train:
                logging.warning("%s: no bundle at %s; left out (use --train)", cfg.name,
                                _member_source(cfg, overrides).bundle)
                continue
            train_from_config(cfg)
        ready.append(cfg)
    if len(ready) < args.min_members:
        print(f"only {len(ready)} member bundle(s) ready; need {args.min_members}", file=sys.stderr)
        return 2
    description = args.description or f"{ready[0].description} (mean of {len(ready)} seeded runs)"
    bundle = build_ensemble(ready, args.name, args.version, description, overrides, args.mixed_recipes,
                            args.mixed_splits)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    m = meta["metrics"]
    print(json.dumps({"bundle": str(bundle), "members": [c.name for c in ready],
                      "validation_selection": [m.get("selection_metric"), m.get("selection_value")],
                      "threshold": meta["operating_threshold"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
