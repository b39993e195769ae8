"""Average independently seeded runs of one recipe into one bundle (issue 6: covid, lungs).

    .venv/bin/python -m training.recipes.ensemble CONFIG [CONFIG ...] --name NAME --version V \
        [--train] [--member-bundle CONFIG=BUNDLE_DIR ...]

Each config is an ordinary ``cxr-node train`` run (the members may be trained in parallel beforehand;
``--train`` trains, one after the other, every member whose bundle is missing). A member's bundle is
``runs/<name>/bundles/<name>`` unless ``--member-bundle`` names another folder (e.g. a shipped bundle in
``models/``: its sha-checked weights are used as they are). The members must share task, data, input,
model, train and threshold settings (and lungs bundle): they differ only by seed. Every member's
``manifest_sha256`` must equal the ensemble's split manifest (the first member's run manifest, or the
one the config rebuilds), so all were trained and selected on the same split.

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
from pathlib import Path

from training.config import RunConfig
from training.errors import TrainingError

MATCHING_FIELDS = ("task", "lung_bundle")


COMBINATION = {
    "classification": "mean of the members' P(positive); Grad-CAM: mean of the members' maps",
    "segmentation": "mean of the members' per-pixel P(foreground), then the ensemble's own threshold",
}


def _member_bundle(cfg: RunConfig, overrides: dict[str, Path] | None = None) -> Path:
    key = str(Path(cfg.source_file).resolve())
    if overrides and key in overrides:
        return overrides[key]
    return cfg.run_dir / "bundles" / cfg.name


def check_members(cfgs: list[RunConfig]) -> None:
    """Members may differ by name, version, seed and description only."""
    first = cfgs[0]
    for cfg in cfgs[1:]:
        for name in MATCHING_FIELDS:
            if getattr(cfg, name) != getattr(first, name):
                raise TrainingError(f"{cfg.source_file}: {name} differs from {first.source_file}")
        for part in ("data", "model", "input", "train", "threshold"):
            if getattr(cfg, part) != getattr(first, part):
                raise TrainingError(f"{cfg.source_file}: [{part}] differs from {first.source_file}")
    if first.task == "ggo_detection":
        raise TrainingError(f"{first.source_file}: YOLO detectors are not averaged by this recipe")
    if len({c.seed for c in cfgs}) != len(cfgs):
        raise TrainingError("ensemble members must have distinct seeds")


def build_ensemble(
    cfgs: list[RunConfig],
    name: str,
    version: str,
    description: str,
    member_bundles: dict[str, Path] | None = None,
) -> Path:
    """Load the member bundles, average them, and export the ensemble bundle under runs/<name>."""
    from pipelines.bundle import load_bundle
    from pipelines.networks import MeanEnsemble
    from training.cache import ArrayCache
    from training.data import prepare_rows
    from training.distributed import DistContext
    from training.export import export_torch_bundle
    from training.tasks import TASK_SPECS
    from training.trainers import covid
    from training.trainers.loop import build_loss, default_selection, input_spec_dict, lung_masks_for

    spec = TASK_SPECS[cfgs[0].task]
    members = [load_bundle(_member_bundle(c, member_bundles), spec.task) for c in cfgs]
    for bundle in members:
        for p in bundle.network.parameters():
            p.requires_grad_(False)
    net = MeanEnsemble([b.network for b in members]).eval()
    definition = {"_target_": "pipelines.networks.mean_ensemble",
                  "members": [b.metadata.network_def for b in members]}
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
    for b, c in zip(members, cfgs, strict=True):
        if b.metadata.manifest_sha256 != manifest_sha:
            raise TrainingError(f"{c.name}: trained on another manifest than {manifest_sha[:12]}")
    in_spec = input_spec_dict(cfg, spec)
    cache = ArrayCache(cfg.data.cache_dir or cfg.run_dir.parent / "cache")
    lung_masks = lung_masks_for(cfg, spec, rows, in_spec)
    # The members' own trainer's loss and epoch rule (covid brings its own), so the ensemble's
    # validation figures are computed exactly as each member's were.
    selection = covid.select if spec.task == "covid" else default_selection(cfg, spec)
    device = next(net.parameters()).device.type
    loss_fn = build_loss(cfg, spec, [r for r in rows if r.split == "train"], device)
    bundle = export_torch_bundle(
        cfg, spec, net, definition, in_spec, rows, manifest_sha, cache,
        best_epoch=[int(b.metadata.metrics.get("best_epoch", -1)) for b in members],
        lung_masks=lung_masks, loss_fn=loss_fn, selection=selection,
    )
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["ensemble"] = {
        "combination": COMBINATION[spec.kind],
        "members": [
            {"name": b.metadata.name, "version": b.metadata.version, "seed": c.seed, "config": c.source_file,
             "best_epoch": b.metadata.metrics.get("best_epoch"),
             "validation_selection_value": b.metadata.metrics.get("selection_value"),
             "weights_sha256": b.metadata.weights.get("sha256")}
            for b, c in zip(members, cfgs, strict=True)
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
                        help="take this member's bundle from DIR (e.g. a shipped bundle) instead of its run")
    parser.add_argument("--train", action="store_true", help="train members whose bundle is missing")
    parser.add_argument("--min-members", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.config import load_config
    from training.run import train_from_config

    cfgs = [load_config(p) for p in args.configs]
    check_members(cfgs)
    overrides: dict[str, Path] = {}
    for item in args.member_bundle:
        config, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"--member-bundle {item!r}: expected CONFIG=DIR")
        overrides[str(Path(config).resolve())] = Path(folder)
    ready = []
    for cfg in cfgs:
        if not (_member_bundle(cfg, overrides) / "configs" / "metadata.json").is_file():
            if not args.train:
                logging.warning("%s: no bundle at %s; left out (use --train)", cfg.name,
                                _member_bundle(cfg, overrides))
                continue
            train_from_config(cfg)
        ready.append(cfg)
    if len(ready) < args.min_members:
        print(f"only {len(ready)} member bundle(s) ready; need {args.min_members}", file=sys.stderr)
        return 2
    description = args.description or f"{ready[0].description} (mean of {len(ready)} seeded runs)"
    bundle = build_ensemble(ready, args.name, args.version, description, overrides)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    m = meta["metrics"]
    print(json.dumps({"bundle": str(bundle), "members": [c.name for c in ready],
                      "validation_selection": [m.get("selection_metric"), m.get("selection_value")],
                      "threshold": meta["operating_threshold"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
