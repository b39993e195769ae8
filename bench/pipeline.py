"""Pipeline benchmark: ms per image per stage and images/s, batch 1 and 16, on CPU (and CUDA).

Uses the shipped bundles in models/ when every task has one; otherwise random bundles, tiny
(64 px, the test bundles) or ``--realistic`` (full-size networks at production input sizes: ResNet18
224 px, UNet 16-256 at 256 px, VGG16 224 px + Grad-CAM, YOLO11n 512 px), and says which it used.
Images: the real chest DICOM samples (1024 to 2446 px, JPEG / JPEG 2000) and ieee8023 PNGs
(512 px), cycled to --images. Decoding is timed apart ("decode"); stage times come from
ChestResult.timings_ms (a batch stage's time divided by its images).

    .venv/bin/python bench/pipeline.py                         # tiny random bundles if models/ is empty
    .venv/bin/python bench/pipeline.py --realistic --images 16 --device cpu
    .venv/bin/python bench/pipeline.py --models models --device cuda
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
STAGES = ("projection", "lungs", "covid", "ggo_detection", "ggo_segmentation")
DICOMS = (
    "txv_siim_ptx_CR_chest_PA.dcm",
    "orthanctests_Monochrome1-Jpeg_CR.dcm",
    "pydicomdata_RG1_J2KI_CR_chest.dcm",
    "nhsx_nih_cxr_dx_sc.dcm",
)


def image_paths(count: int) -> list[Path]:
    paths = [DATA / "dicom_samples" / name for name in DICOMS]
    with open(DATA / "ieee8023_covid_cxr" / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["projection"] == "frontal"]
    pngs = [DATA / "ieee8023_covid_cxr" / r["image"] for r in rows]
    paths += pngs[: max(0, count - len(paths))]
    return [paths[i % len(paths)] for i in range(count)]


def choose_models(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    from pipelines.bundle import BundleError, BundleRegistry

    if args.models is not None:
        return args.models, f"bundles from {args.models}"
    try:
        if not BundleRegistry(REPO / "models").missing_tasks():
            return REPO / "models", "SHIPPED bundles from models/"
    except BundleError:
        pass
    from pipelines.testing import write_random_bundles

    target = workdir / "random-models"
    write_random_bundles(target, state_dir=workdir / "state", realistic=args.realistic)
    kind = "REALISTIC-SIZE random" if args.realistic else "TINY random (64 px)"
    return target, f"{kind} bundles (models/ has no complete set): speed only, outputs meaningless"


def bench_device(
    models: Path, device: str, images: list, batch_sizes: list[int], state: Path, repeats: int
) -> None:
    from pipelines.chest import ChestPipeline

    start = time.perf_counter()
    pipeline = ChestPipeline.from_models_dir(models, device=device, state_dir=state)
    print(f"\n== device {device}: models loaded in {time.perf_counter() - start:.1f} s")
    pipeline.batch_size = max(batch_sizes)
    pipeline.analyze_batch(images[: min(len(images), 4)])  # warm-up: kernels, allocator, cudnn autotune
    header = " ".join(f"{s:>16}" for s in STAGES)
    print(f"{'batch':>5} {'img/s':>7} {header} {'total':>9}   (ms per image)")
    for batch in batch_sizes:
        pipeline.batch_size = batch
        walls, per_stage = [], {s: [] for s in (*STAGES, "total")}
        for _ in range(repeats):
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if batch == 1:
                results = [pipeline.analyze(im) for im in images]
            else:
                results = pipeline.analyze_batch(images)
            walls.append(time.perf_counter() - t0)
            for key in per_stage:
                per_stage[key].append(statistics.fmean(r.timings_ms.get(key, 0.0) for r in results))
        wall = statistics.median(walls)
        cells = " ".join(f"{statistics.median(per_stage[s]):16.1f}" for s in STAGES)
        print(f"{batch:>5} {len(images) / wall:7.2f} {cells} {statistics.median(per_stage['total']):9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="bundle folder (default: models/ when complete, else random bundles)",
    )
    parser.add_argument("--realistic", action="store_true", help="random bundles at production sizes")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--device",
        action="append",
        choices=("cpu", "cuda"),
        help="repeatable; default: cpu, and cuda when present",
    )
    args = parser.parse_args()

    import torch

    from pipelines.image import load_image

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        workdir = Path(tmp)
        models, what = choose_models(args, workdir)
        paths = image_paths(args.images)
        t0 = time.perf_counter()
        images = [load_image(p) for p in paths]
        decode_ms = (time.perf_counter() - t0) * 1000 / len(images)
        sizes = sorted({f"{im.shape[0]}x{im.shape[1]}" for im in images})
        print(f"models: {what}")
        print(f"images: {len(images)} ({len(set(paths))} distinct; sizes {', '.join(sizes)})")
        print(f"decode: {decode_ms:.1f} ms per image (pydicom + plugins / PIL, VOI, inversion)")
        print(
            f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
        )
        for device in devices:
            bench_device(models, device, images, batch_sizes, workdir / "state", args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
