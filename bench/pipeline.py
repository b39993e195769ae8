"""Pipeline benchmark: ms per image per stage and images/s, batch 1 and 16, on CPU (and CUDA).

Then the node's whole cost per image, warm, beside the models alone: decode (pydicom + plugins),
the five models, writing the result objects (SEG, SR, secondary capture: highdicom), storing them
(Part 10 encoding, file write + fsync, as the worker does), on each real chest DICOM sample in turn
(``--node-images`` rounds after one warm-up round).

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
import logging
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
    from pipelines.runtime import freeze_loaded_heap

    start = time.perf_counter()
    pipeline = ChestPipeline.from_models_dir(models, device=device, state_dir=state)
    freeze_loaded_heap()  # as the worker does
    print(f"\n== device {device}: models loaded in {time.perf_counter() - start:.1f} s")
    pipeline.batch_size = max(batch_sizes)
    pipeline.analyze_batch(images[: min(len(images), 4)])  # warm-up: kernels, allocator, cudnn autotune
    header = " ".join(f"{s:>16}" for s in STAGES)
    print(f"{'batch':>5} {'img/s':>7} {header} {'total':>9}   (ms per image)")
    for batch in batch_sizes:
        pipeline.batch_size = batch
        walls: list[float] = []
        per_stage: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
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


def bench_node_cost(models: Path, device: str, state: Path, workdir: Path, rounds: int) -> None:
    """Per image, warm: decode, models, writing, storing -- what the worker spends -- and the ratio
    (decode + writing) / models that the result writers are held to."""
    from node.results import build_result_objects
    from node.store import InstanceStore, encode_part10
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_image
    from pipelines.runtime import freeze_loaded_heap

    pipeline = ChestPipeline.from_models_dir(models, device=device, state_dir=state)
    freeze_loaded_heap()  # as the worker does
    store = InstanceStore(workdir / "store", fsync=True)
    paths = [DATA / "dicom_samples" / name for name in DICOMS]
    print(f"\n== node cost per image on {device} (batch 1, warm; median of {rounds} round(s)), ms")
    header = f"{'image':<40} {'size':>10} {'decode':>7} {'models':>7} {'write':>7} {'(seg/sr/sc)':>15} " \
             f"{'store':>6} {'node':>7} {'(dec+wr)/models':>16}"
    print(header)
    for path in paths:
        keys = ("decode", "models", "write", "store", "seg", "sr", "sc")
        rows: dict[str, list[float]] = {k: [] for k in keys}
        for round_ in range(rounds + 1):  # round 0 warms up (first-call costs of every library)
            t0 = time.perf_counter()
            image = load_image(path)
            t1 = time.perf_counter()
            result = pipeline.analyze(image)
            t2 = time.perf_counter()
            parts: dict[str, float] = {}
            objects = build_result_objects(image.dataset, result, image=image, timings_ms=parts)
            t3 = time.perf_counter()
            store.sync_dirs({store.write(str(ds.SOPInstanceUID), encode_part10(ds))[1] for ds in objects})
            t4 = time.perf_counter()
            if round_ == 0:
                continue
            for key, seconds in zip(keys[:4], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                rows[key].append(seconds * 1000.0)
            for key in ("seg", "sr", "sc"):
                rows[key].append(parts.get(key, 0.0))
        m = {k: statistics.median(v) for k, v in rows.items()}
        split = f"{m['seg']:.0f}/{m['sr']:.0f}/{m['sc']:.0f}"
        node = m["decode"] + m["models"] + m["write"] + m["store"]
        size = f"{image.shape[0]}x{image.shape[1]}"
        print(f"{path.name[:40]:<40} {size:>10} {m['decode']:7.0f} {m['models']:7.0f} "
              f"{m['write']:7.0f} {split:>15} {m['store']:6.0f} {node:7.0f} "
              f"{(m['decode'] + m['write']) / m['models']:16.2f}")


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
    parser.add_argument("--node-images", type=int, default=2,
                        help="rounds over the real DICOM samples for the node's per-image cost (0: skip)")
    parser.add_argument(
        "--device",
        action="append",
        choices=("cpu", "cuda"),
        help="repeatable; default: cpu, and cuda when present",
    )
    args = parser.parse_args()
    # the samples' own quirks (a malformed Patient's Age, zero Pixel Spacing) would be logged on every
    # round between the figures; errors still show
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

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
            if args.node_images > 0:
                bench_node_cost(models, device, workdir / "state", workdir, args.node_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
