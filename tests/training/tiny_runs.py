"""Tiny run configurations (64 px, one epoch, a handful of real images) for the trainer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_UNET = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}


def tiny_config(task: str, out: Path, data_root: Path, **extra: Any) -> dict[str, Any]:
    sources = {
        "projection": [("shared_ieee8023", "ieee8023_covid_cxr")],
        "covid": [("shared_ieee8023", "ieee8023_covid_cxr"), ("shared_openist", "openist_normal_lungmask")],
        "lungs": [("shared_openist", "openist_normal_lungmask")],
        "ggo_segmentation": [("shared_generalblockchain", "generalblockchain_cxr_seg")],
        "ggo_detection": [("shared_generalblockchain", "generalblockchain_cxr_seg")],
    }[task]
    model = {
        "projection": {"architecture": "resnet18", "params": {"width": 8}},
        "covid": {"architecture": "vgg16", "params": {"width": 4, "dropout": 0.0}},
        "lungs": {"architecture": "unet", "params": TINY_UNET},
        "ggo_segmentation": {"architecture": "unet", "params": TINY_UNET},
        "ggo_detection": {"architecture": "yolo", "yolo_cfg": "yolo11n.yaml"},
    }[task]
    cfg: dict[str, Any] = {
        "run": {"task": task, "name": f"tiny-{task}", "seed": 3, "output_dir": str(out), "version": "0.0.1",
                **({"min_patient_age_years": 18} if task == "covid" else {})},
        "data": {
            "root": str(data_root),
            "sources": [{"adapter": a, "path": p} for a, p in sources],
            "max_images": 6,
            "near_duplicates": task in ("covid", "projection"),
            "cache_dir": str(out / "cache"),
        },
        "model": model,
        "input": {"size": 64},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "augment": task in ("covid", "lungs")},
        "evaluation": {"n_bootstrap": 50},
    }
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        cfg.setdefault(section, {})[key] = value
    return cfg


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for our run configurations (tables, arrays of inline tables, scalars, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v)} to TOML")

    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)
