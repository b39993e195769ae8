"""Run configuration: one TOML file per training run, typed defaults here (nanoGPT style).

A run file names the task, the data (adapter + folder per source, under a data root that the
command line may override), the network, the input (the bundle's ``input`` block), the training
settings and where the run goes. Unknown keys are errors naming the section: a typo must not be
ignored silently. The whole resolved configuration is stored in every checkpoint and bundle.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.errors import ConfigError

TASKS = ("projection", "lungs", "covid", "ggo_detection", "ggo_segmentation")


@dataclass
class SourceConfig:
    adapter: str
    path: str  # relative to data.root unless absolute


@dataclass
class DataConfig:
    root: str = "../shared/data"
    sources: list[SourceConfig] = field(default_factory=list)
    manifest: str = ""  # an existing manifest CSV instead of scanning sources (split column kept if set)
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    split_seed: int = 0
    near_duplicates: bool = True  # link near-identical pictures (thumbnail r > 0.97) before splitting
    max_images: int = 0  # 0 = all; a seeded subsample per split for smoke runs
    cache_dir: str = ""  # default: <output_dir>/../cache
    # Segmentation only: datasets whose masks follow ANOTHER convention than the task's (e.g. OpenIST's
    # heart-excluded lungs next to V7's retro-cardiac-included ones). Each gets its own extra output
    # channel, trained on its rows only and dropped from the shipped network's output, so the shared
    # layers learn from more images while the served mask keeps one convention. Their rows are all
    # training rows: they are never validated or tested, and the other rows are split as without them.
    aux_mask_datasets: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    architecture: str = "resnet18"
    params: dict[str, Any] = field(default_factory=dict)
    yolo_cfg: str = "yolo11n.yaml"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weighting: bool = True  # BCE pos_weight = negatives / positives of the training split
    sampling: str = "shuffle"  # shuffle | class_balanced | source_balanced
    augment: bool = True
    num_workers: int = 0
    max_batches_per_epoch: int = 0  # 0 = all (smoke runs cap it)
    threads: int = 0  # torch threads per process; 0 = cores / processes
    patience: int = 0  # early stopping on the validation metric; 0 = off


@dataclass
class ThresholdConfig:
    method: str = "youden"  # youden | sensitivity | fixed
    target: float = 0.9  # sensitivity target for method = sensitivity
    value: float = 0.5  # for method = fixed


@dataclass
class EvalConfig:
    n_bootstrap: int = 1000


@dataclass
class RunConfig:
    task: str
    name: str
    version: str = "0.1.0"
    seed: int = 0
    output_dir: str = "runs"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    # A lungs bundle folder: when set, EVERY covid image gets its lung mask from it (as at inference;
    # manual masks exist only for some classes, see training/inputs.lung_masks_for). "" = manual masks
    # only (lungs_only mode then drops images without one; the shortcut check uses those it has).
    lung_bundle: str = ""
    # Written into the bundle (BundleMetadata.min_patient_age_years): the node gives no output of this
    # model for a patient whose DICOM header says younger. 0 = no limit.
    min_patient_age_years: float = 0.0
    source_file: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"{self.source_file or 'config'}: task {self.task!r} not in {TASKS}")
        if self.train.sampling not in ("shuffle", "class_balanced", "source_balanced"):
            raise ConfigError(
                f"{self.source_file}: [train] sampling {self.train.sampling!r} "
                "is not shuffle, class_balanced or source_balanced"
            )
        if self.data.aux_mask_datasets and self.task not in ("lungs", "ggo_segmentation"):
            raise ConfigError(f"{self.source_file}: [data] aux_mask_datasets is for segmentation tasks only")
        if self.min_patient_age_years < 0:
            raise ConfigError(f"{self.source_file}: [run] min_patient_age_years must be >= 0")
        if self.threshold.method not in ("youden", "sensitivity", "fixed"):
            raise ConfigError(f"{self.source_file}: [threshold] method {self.threshold.method!r} unknown")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, data: dict[str, Any], section: str, where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in [{section}]; known: {sorted(known)}")
    return cls(**data)


def config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    data = dict(data)
    try:
        run = dict(data.pop("run", {}))
        sections: dict[str, Any] = {}
        if "data" in data:
            d = dict(data.pop("data"))
            d["sources"] = [_build(SourceConfig, s, "data.sources", where) for s in d.get("sources", [])]
            sections["data"] = _build(DataConfig, d, "data", where)
        for name, cls in (
            ("model", ModelConfig),
            ("train", TrainConfig),
            ("threshold", ThresholdConfig),
            ("evaluation", EvalConfig),
        ):
            if name in data:
                sections[name] = _build(cls, dict(data.pop(name)), name, where)
        if "input" in data:
            sections["input"] = dict(data.pop("input"))
        if data:
            raise ConfigError(f"{where}: unknown section(s) {sorted(data)}")
        if "task" not in run or "name" not in run:
            raise ConfigError(f"{where}: [run] needs task and name")
        return _build(RunConfig, {**run, **sections, "source_file": where}, "run", where)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(
    path: Path | str,
    *,
    data_root: str | None = None,
    output_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a run TOML; ``data_root``/``output_dir`` override the file (command-line options)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"run configuration not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = config_from_dict(data, where=str(path))
    if data_root is not None:
        cfg.data.root = data_root
    if output_dir is not None:
        cfg.output_dir = output_dir
    return cfg
