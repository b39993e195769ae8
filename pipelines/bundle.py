"""Model bundles: one MONAI-style folder per model, with a sha256 of its weights.

Layout (see pipelines/BUNDLES.md)::

    <models_dir>/<bundle-name>/configs/metadata.json   MONAI's standard keys + ours (BundleMetadata)
    <models_dir>/<bundle-name>/configs/inference.json  {"network_def": ...} for MONAI tooling
    <models_dir>/<bundle-name>/models/model.pt         state_dict (torch.save), or an ultralytics checkpoint
    <models_dir>/<bundle-name>/docs/README.md          the model card
    <models_dir>/<covid-bundle>/input_lungs/           optional: the lungs bundle whose masks cut a
                                                       lungs-only COVID model's input in training

``network_def`` is instantiated by ``monai.bundle.ConfigParser``. Because a bundle is data that may
come from elsewhere, its ``_target_`` must name a callable under an allowed module prefix and it may
not hold ``$`` expressions or ``@`` references (no code inside JSON, STYLE.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.errors import BundleError
from pipelines.lung_field import LateralFieldRule
from pipelines.preprocess import InputSpec
from pipelines.results import ModelInfo
from pipelines.tasks.ggo_decision import GgoDecisionRule

log = logging.getLogger(__name__)

TASKS = ("projection", "lungs", "covid", "ggo_detection", "ggo_segmentation")
METADATA_FILE = Path("configs") / "metadata.json"
INFERENCE_FILE = Path("configs") / "inference.json"
WEIGHTS_FILE = Path("models") / "model.pt"
CARD_FILE = Path("docs") / "README.md"
# A lungs-only classifier is trained on crops cut with one lungs bundle's masks; carrying that bundle
# inside the classifier's folder keeps the input at inference what it was in training when
# models/lungs is replaced by a better lung model (the registry only looks one level down).
INPUT_LUNGS_DIR = Path("input_lungs")
ALLOWED_TARGET_PREFIXES = ("pipelines.networks.", "monai.networks.nets.", "torchvision.models.")
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class BundleMetadata:
    """Our bundle metadata (written beside MONAI's standard keys in configs/metadata.json)."""

    name: str
    version: str
    task: str
    architecture: str
    network_def: dict[str, Any]
    input: InputSpec
    labels: list[str]
    # Probability at or above which the positive label is called (covid: COVID-19, projection:
    # lateral, segmentation: foreground, ggo_detection: minimum box confidence).
    operating_threshold: float = 0.5
    threshold_method: str = "default 0.5 (not tuned)"
    description: str = ""
    # Grad-CAM layer (classifiers), e.g. "features.29" for VGG16.
    target_layer: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    manifest_sha256: str | None = None
    intended_use: str = "Research use only; not for diagnosis."
    authors: str = "cxr-node"
    license: str = "research use only"
    # Youngest patient (years, from the DICOM header) the model is meant for; the pipeline withholds the
    # model's output for a younger patient and says why (pipelines/population.py). 0 = no limit.
    min_patient_age_years: float = 0.0
    # One sentence a reader of the results must see beside this model's values (the SR carries it as a
    # note): a known failure mode the card describes at length. Set when shipping
    # (training.recipes.ship_bundle --extra-json). Empty: none.
    reader_caution: str = ""
    # Lungs bundles: the lung-field witness's rule measured on this model's masks
    # ({"min_width": ..., "max_second": ..., "measured": "..."}; pipelines/lung_field.py). A frontal call
    # whose mask matches it is not analysed. Empty: no such check. Written by
    # training.recipes.lung_field_check --write-metadata.
    lateral_field: dict[str, Any] = field(default_factory=dict)
    # ggo_segmentation bundles: the image-level "GGO present" decision (pipelines/tasks/ggo_decision.py),
    # fitted with this model and the detector whose sha256 it names. Empty: no decision (GGO reported
    # unchecked, with a warning). Written by training.recipes.ggo_decision --write-metadata.
    ggo_decision: dict[str, Any] = field(default_factory=dict)
    # Filled by save_bundle: {"file": "models/model.pt", "sha256": ..., "dtype": ...}.
    weights: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BundleError(f"bundle {self.name!r}: unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if isinstance(self.input, Mapping):
            self.input = InputSpec.from_dict(dict(self.input))
        if not 0.0 <= float(self.operating_threshold) <= 1.0:
            raise BundleError(
                f"bundle {self.name!r}: operating_threshold {self.operating_threshold} not in [0, 1]")
        if not float(self.min_patient_age_years) >= 0.0:
            raise BundleError(
                f"bundle {self.name!r}: min_patient_age_years {self.min_patient_age_years} must be >= 0")
        if self.lateral_field:
            if self.task != "lungs":
                raise BundleError(
                    f"bundle {self.name!r}: lateral_field is for lungs bundles, not {self.task}")
            try:
                LateralFieldRule.from_metadata(self.lateral_field)
            except ValueError as exc:
                raise BundleError(f"bundle {self.name!r}: {exc}") from exc
        if self.ggo_decision:
            if self.task != "ggo_segmentation":
                raise BundleError(
                    f"bundle {self.name!r}: ggo_decision is for ggo_segmentation bundles, not {self.task}")
            try:
                GgoDecisionRule.from_metadata(self.ggo_decision)
            except ValueError as exc:
                raise BundleError(f"bundle {self.name!r}: {exc}") from exc
        if "_target_" not in self.network_def:
            raise BundleError(f"bundle {self.name!r}: network_def has no _target_")

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version, task=self.task, architecture=self.architecture,
                         caution=self.reader_caution)

    def to_json(self) -> dict[str, Any]:
        """metadata.json content: MONAI's standard keys first, then ours."""
        from importlib.metadata import version

        # Read versions from the installed distributions: importing MONAI costs ~11 s on 2 cores.
        monai_version, torch_version, numpy_version = (version(d) for d in ("monai", "torch", "numpy"))
        ours = {f.name: getattr(self, f.name) for f in fields(self)}
        ours["input"] = self.input.to_dict()
        size = self.input.size
        return {
            "schema": "cxr-node bundle metadata 1 (MONAI bundle layout; not checked against MONAI's schema)",
            "version": self.version,
            "changelog": {self.version: self.description or "release"},
            "monai_version": monai_version,
            "pytorch_version": torch_version.split("+")[0],
            "numpy_version": numpy_version,
            "required_packages_version": {},
            "copyright": self.authors,
            "data_source": json.dumps(self.training_data, sort_keys=True)[:500],
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "magnitude",
                                     "num_channels": self.input.channels,
                                     "spatial_shape": [size, size], "dtype": "float32",
                                     "value_range": [], "is_patch_data": False,
                                     "channel_def": {"0": "grey, " + self.input.normalization}}},
                "outputs": {"pred": {"type": "probabilities" if self.task in ("projection", "covid")
                                     else "segmentation" if self.task in ("lungs", "ggo_segmentation")
                                     else "object detection", "format": "logits", "dtype": "float32",
                                     "channel_def": dict(enumerate(self.labels))}},
            },
            **ours,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "metadata.json") -> BundleMetadata:
        known = {f.name for f in fields(cls)}
        required = {"name", "version", "task", "architecture", "network_def", "input", "labels"}
        missing = sorted(required - set(data))
        if missing:
            raise BundleError(f"{where}: missing keys {missing}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: invalid metadata: {exc}") from exc


@dataclass
class LoadedBundle:
    """A bundle whose weights passed the sha256 check, with its network ready on ``device``.

    ``network`` is a ``torch.nn.Module`` in eval mode, or an ``ultralytics.YOLO`` for ggo_detection.
    """

    path: Path
    metadata: BundleMetadata
    network: Any
    device: str
    # The lungs bundle in ``input_lungs/`` (covid bundles that carry one), loaded and checked too.
    input_lungs: LoadedBundle | None = None

    @property
    def info(self) -> ModelInfo:
        return self.metadata.info


def input_lungs_dir(bundle_dir: Path | str) -> Path | None:
    """``<bundle>/input_lungs`` when the bundle carries the lungs bundle it was trained with."""
    nested = Path(bundle_dir) / INPUT_LUNGS_DIR
    return nested if (nested / METADATA_FILE).is_file() else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_plain_config(value: Any, where: str) -> None:
    """Refuse MONAI config expressions: a bundle is data, not code."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise BundleError(f"{where}: network_def may not contain expressions or references ({value!r})")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "_target_":
                if not isinstance(item, str) or not item.startswith(ALLOWED_TARGET_PREFIXES):
                    raise BundleError(f"{where}: _target_ {item!r} is not under {ALLOWED_TARGET_PREFIXES}")
            else:
                _check_plain_config(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_plain_config(item, where)


def save_bundle(
    bundle_dir: Path | str,
    metadata: BundleMetadata,
    state_dict_or_checkpoint_path: Mapping[str, Any] | Path | str,
    card_markdown: str,
    *,
    dtype: str = "float32",
) -> Path:
    """Write a bundle folder; returns it. Fills ``metadata.weights`` (file, sha256, dtype).

    A state dict is saved with ``torch.save`` (floating tensors cast to ``dtype``); a path is copied
    as it is (an ultralytics checkpoint for ggo_detection). metadata.json is written last, so a
    half-written bundle is never picked up by the registry.
    """
    import torch

    bundle_dir = Path(bundle_dir)
    if dtype not in _DTYPES:
        raise BundleError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    _check_plain_config(metadata.network_def, f"bundle {metadata.name!r}")
    if metadata.task == "ggo_detection" and isinstance(state_dict_or_checkpoint_path, Mapping):
        raise BundleError("a ggo_detection bundle needs an ultralytics checkpoint path, not a state dict")
    for sub in ("configs", "models", "docs"):
        (bundle_dir / sub).mkdir(parents=True, exist_ok=True)
    (bundle_dir / METADATA_FILE).unlink(missing_ok=True)
    weights = bundle_dir / WEIGHTS_FILE
    if isinstance(state_dict_or_checkpoint_path, Mapping):
        target = getattr(torch, dtype)
        state = {k: (v.detach().to("cpu", target) if torch.is_floating_point(v) else v.detach().cpu())
                 for k, v in state_dict_or_checkpoint_path.items()}
        torch.save(state, weights)
    else:
        source = Path(state_dict_or_checkpoint_path)
        if not source.is_file():
            raise BundleError(f"checkpoint not found: {source}")
        shutil.copyfile(source, weights)
    metadata.weights = {"file": WEIGHTS_FILE.as_posix(), "sha256": sha256_file(weights), "dtype": dtype}
    (bundle_dir / CARD_FILE).write_text(card_markdown, encoding="utf-8")
    (bundle_dir / INFERENCE_FILE).write_text(
        json.dumps({"network_def": metadata.network_def}, indent=2) + "\n", encoding="utf-8")
    (bundle_dir / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2) + "\n", encoding="utf-8")
    log.info("saved bundle %s (%s, sha256 %s)", bundle_dir, metadata.task, metadata.weights["sha256"][:12])
    return bundle_dir


def read_metadata(bundle_dir: Path | str) -> BundleMetadata:
    """Read and validate configs/metadata.json (cheap: no torch, no weights)."""
    path = Path(bundle_dir) / METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: not found (is {bundle_dir} a bundle folder?)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable metadata: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: metadata is not a JSON object")
    return BundleMetadata.from_json(data, where=str(path))


def verify_weights(bundle_dir: Path, metadata: BundleMetadata) -> Path:
    """Check the weights file against the sha256 in the metadata; returns its path."""
    rel = metadata.weights.get("file")
    expected = metadata.weights.get("sha256")
    if not rel or not expected:
        raise BundleError(f"{bundle_dir}: metadata has no weights file/sha256")
    weights = (bundle_dir / rel).resolve()
    if not weights.is_relative_to(bundle_dir.resolve()):
        raise BundleError(f"{bundle_dir}: weights file {rel!r} lies outside the bundle")
    if not weights.is_file():
        raise BundleError(f"{bundle_dir}: weights file {rel} is missing")
    actual = sha256_file(weights)
    if actual != expected:
        raise BundleError(
            f"{weights}: sha256 {actual} does not match the metadata's {expected} (corrupt or replaced)")
    return weights


def load_bundle(
    bundle_dir: Path | str, expected_task: str, device: str = "cpu", state_dir: Path | str | None = None
) -> LoadedBundle:
    """Load one bundle for ``expected_task``: metadata, sha256, network and weights, on ``device``.

    Raises :class:`BundleError` when the metadata is for another task, the weights do not match their
    sha256, or the weights do not fit the network. ``state_dir`` is ultralytics' folder (ggo_detection).
    """
    bundle_dir = Path(bundle_dir)
    metadata = read_metadata(bundle_dir)
    if expected_task not in TASKS:
        raise BundleError(f"unknown task {expected_task!r}; known: {', '.join(TASKS)}")
    if metadata.task != expected_task:
        raise BundleError(
            f"{bundle_dir}: bundle {metadata.name!r} is a {metadata.task!r} model, "
            f"refused for task {expected_task!r}")
    _check_plain_config(metadata.network_def, str(bundle_dir / METADATA_FILE))
    weights = verify_weights(bundle_dir, metadata)
    if metadata.task == "ggo_detection":
        network = _load_yolo(weights, device, state_dir)
    else:
        network = _load_torch(bundle_dir, metadata, weights, device)
    nested = input_lungs_dir(bundle_dir) if metadata.task == "covid" else None
    input_lungs = load_bundle(nested, "lungs", device=device) if nested is not None else None
    log.info("loaded bundle %s %s (%s) on %s", metadata.name, metadata.version, metadata.task, device)
    return LoadedBundle(path=bundle_dir, metadata=metadata, network=network, device=device,
                        input_lungs=input_lungs)


def instantiate_network(metadata: BundleMetadata) -> Any:
    """Build the (untrained) network of ``network_def`` with MONAI's ConfigParser."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": json.loads(json.dumps(metadata.network_def))})
    return parser.get_parsed_content("network_def", instantiate=True)


def _load_torch(bundle_dir: Path, metadata: BundleMetadata, weights: Path, device: str) -> Any:
    import torch

    try:
        network = instantiate_network(metadata)
    except Exception as exc:  # ConfigParser wraps any constructor error in RuntimeError
        raise BundleError(f"{bundle_dir}: cannot build network_def {metadata.network_def}: {exc}") from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
    except (RuntimeError, OSError, AttributeError, ValueError) as exc:
        raise BundleError(f"{weights}: weights do not load into {metadata.architecture}: {exc}") from exc
    return network.to(device).eval()


def _load_yolo(weights: Path, device: str, state_dir: Path | str | None) -> Any:
    from pipelines.yolo_env import prepare_ultralytics

    ultralytics = prepare_ultralytics(state_dir)
    try:
        model = ultralytics.YOLO(str(weights), task="detect")
        model.to(device)
    except Exception as exc:  # ultralytics raises TypeError/KeyError/... on foreign files
        raise BundleError(f"{weights}: not an ultralytics detection checkpoint: {exc}") from exc
    return model


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.replace("-", ".").split("."))


class BundleRegistry:
    """Every bundle under ``models_dir``, one chosen per task.

    The choice per task is ``preferred[task]`` (a bundle name) when given, else the highest version
    (ties: name order). Bundles with unreadable metadata are logged and listed in ``problems``; they
    are never chosen.
    """

    def __init__(self, models_dir: Path | str, preferred: Mapping[str, str] | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.preferred = dict(preferred or {})
        self.bundles: dict[str, list[tuple[Path, BundleMetadata]]] = {task: [] for task in TASKS}
        self.problems: dict[Path, str] = {}
        if not self.models_dir.is_dir():
            raise BundleError(f"models folder not found: {self.models_dir}")
        for meta_path in sorted(self.models_dir.glob(f"*/{METADATA_FILE.as_posix()}")):
            bundle_dir = meta_path.parent.parent
            try:
                metadata = read_metadata(bundle_dir)
            except BundleError as exc:
                log.warning("skipping bundle %s: %s", bundle_dir, exc)
                self.problems[bundle_dir] = str(exc)
                continue
            self.bundles[metadata.task].append((bundle_dir, metadata))

    def available_tasks(self) -> list[str]:
        return [task for task in TASKS if self.bundles[task]]

    def missing_tasks(self) -> list[str]:
        return [task for task in TASKS if not self.bundles[task]]

    def choose(self, task: str) -> tuple[Path, BundleMetadata]:
        if task not in TASKS:
            raise BundleError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        candidates = self.bundles[task]
        if not candidates:
            raise BundleError(f"no {task!r} bundle under {self.models_dir}")
        wanted = self.preferred.get(task)
        if wanted is not None:
            for path, metadata in candidates:
                if metadata.name == wanted:
                    return path, metadata
            raise BundleError(f"preferred {task!r} bundle {wanted!r} not found under {self.models_dir}")
        return max(candidates, key=lambda c: (_version_key(c[1].version), c[1].name))

    def load(self, task: str, device: str = "cpu", state_dir: Path | str | None = None) -> LoadedBundle:
        path, _ = self.choose(task)
        return load_bundle(path, task, device=device, state_dir=state_dir)
