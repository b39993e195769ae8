"""Training figures on this machine: what the NPY cache saves, and training throughput per config.

    .venv/bin/python bench/training.py [--data-root ../shared/data] [--steps 3]

Prints (1) per-image cost of decoding + preprocessing a real DICOM / PNG versus reading the
cached memory-mapped NPY, and (2) images per second of one training step (forward + backward +
AdamW) for the network and input size of each shipped run configuration, with the resulting
estimate of one epoch over that configuration's training split. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cache_figures(data_root: Path) -> None:
    from training.cache import ArrayCache, classification_input
    from training.manifest import ManifestRow, file_sha256

    samples = [
        data_root / "dicom_samples" / "pydicomdata_RG1_J2KI_CR_chest.dcm",
        data_root / "dicom_samples" / "orthanctests_Monochrome1-Jpeg_CR.dcm",
        next((data_root / "nih_cxr14_talo" / "images_512").iterdir()),
    ]
    spec = {"size": 224, "mode": "whole_image"}
    with tempfile.TemporaryDirectory() as tmp:
        cache = ArrayCache(tmp)
        for path in samples:
            row = ManifestRow(
                image_path=str(path), dataset="bench", patient_id="b", content_sha256=file_sha256(path)
            )
            t0 = time.perf_counter()
            classification_input(cache, row, spec)
            cold = time.perf_counter() - t0
            warm = []
            for _ in range(20):
                t0 = time.perf_counter()
                arr = classification_input(cache, row, spec)
                float(arr.sum())  # touch the memory-mapped pages
                warm.append(time.perf_counter() - t0)
            print(
                f"cache  {path.name:<42} decode+preprocess {cold * 1000:8.1f} ms   cached read "
                f"{statistics.median(warm) * 1000:6.2f} ms"
            )


def throughput_figures(steps: int) -> None:
    import torch

    from pipelines.networks import build_network
    from training.config import load_config

    torch.set_num_threads(max(1, torch.get_num_threads()))
    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    for name in ("projection", "lungs_member1", "covid_input_lungs", "covid", "ggo_segmentation"):
        cfg = load_config(configs / f"{name}.toml")
        size, batch = int(cfg.input.get("size", 256)), cfg.train.batch_size
        params = dict(cfg.model.params)
        seg = cfg.task in ("lungs", "ggo_segmentation")
        params.update(in_channels=1, **({"out_channels": 1} if seg else {"num_classes": 1}))
        net = build_network(cfg.model.architecture, **params)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(batch, 1, size, size)
        y = torch.rand(batch, 1, size, size).round() if seg else torch.rand(batch).round()
        loss_fn = torch.nn.BCEWithLogitsLoss()
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad()
            out = net(x)
            loss_fn(out if seg else out.reshape(-1), y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        per_image = statistics.median(times[1:]) / batch
        print(
            f"train  {name:<22} {cfg.model.architecture:<9} {size:>4} px batch {batch:>2}: "
            f"{1 / per_image:6.1f} images/s ({per_image * 1000:.0f} ms/image)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    cache_figures(args.data_root)
    throughput_figures(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
