"""``cxr-node analyze PATH... --out DIR``: analyse files offline and write the result objects.

DICOM input gets the node's result objects (SEG with lungs + GGO, TID 1500 SR, secondary-capture
heatmap; only an SR for a lateral image) from ``node.results.build_result_objects``. PNG/JPEG input
has no patient or study to attach DICOM objects to, so it gets PNGs instead (lung and GGO masks,
heatmap, overlay). One line per input image on stdout (a JSON object with ``--json``); an unreadable
file gets an error line naming it and the others are still analysed; the exit status is 1 when any
input failed, 2 when nothing could run (no models, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from node.phi import identity_values, safe_message

if TYPE_CHECKING:  # torch/MONAI stay unimported until run() needs them
    from pipelines.chest import ChestPipeline
    from pipelines.results import ChestResult, SourceImage

log = logging.getLogger("cxr-node.analyze")

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2
PROGRESS_MIN_IMAGES = 4  # a progress bar for more than 3 images


def default_models_dir() -> Path:
    """$CXR_NODE_MODELS, else the models shipped with the installed code (any working directory)."""
    from node.config import shipped_models_dir

    return Path(os.environ["CXR_NODE_MODELS"]) if os.environ.get("CXR_NODE_MODELS") else shipped_models_dir()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Analyse chest X-rays offline. DICOM files get SEG, SR and secondary-capture objects in --out; "
        "PNG/JPEG files get PNG masks, heatmap and overlay instead (no DICOM objects without a DICOM source)."
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path,
                        help="DICOM files or folders (searched recursively); PNG/JPEG files accepted too")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder for the outputs, one subfolder per input image")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input image")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder of model bundles (default: $CXR_NODE_MODELS, else the models shipped "
                             f"with cxr-node: {default_models_dir()})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="inference device (default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="folder for ultralytics' offline state (default: $XDG_CACHE_HOME/cxr-node)")
    parser.add_argument("--ignore-view-position", action="store_true",
                        help="the projection model alone decides frontal/lateral (a DICOM View Position of "
                             "LL/RL stops the chain by default; a disagreement stays a warning)")
    parser.add_argument("--ignore-body-part", action="store_true",
                        help="analyse images whose Body Part Examined names a region without lungs")
    parser.add_argument("--ignore-lung-field", action="store_true",
                        help="analyse a frontal call whose lung mask has a lateral's shape (one field across "
                             "the chest; by default it is not analysed), with a warning")


def _is_candidate(path: Path) -> bool:
    from pipelines.image import RASTER_SUFFIXES, is_dicom_file

    return path.suffix.lower() in RASTER_SUFFIXES + (".dcm", ".dicom") or is_dicom_file(path)


def _collect(paths: list[Path], out: Path) -> Iterator[tuple[Path, str | None]]:
    """(file, None) for every input file; (path, reason) for a path that does not exist.

    Folder scans skip hidden files, DICOMDIR (a media directory, PS3.10 8.6) and the output folder
    (a second run must not analyse the first run's secondary captures).
    """
    out = out.resolve()
    for path in paths:
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if found.name.upper() == "DICOMDIR" or found.resolve().is_relative_to(out):
                    continue
                if _is_candidate(found):
                    yield found, None
        elif path.is_file():
            yield path, None
        else:
            yield path, "no such file or folder"


class _Outputs:
    """One output subfolder per input, named after the file (``-2``, ``-3``... on a clash)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.used: set[str] = set()

    def folder(self, source: Path) -> Path:
        name, n = source.stem or "image", 1
        while (name if n == 1 else f"{name}-{n}") in self.used:
            n += 1
        chosen = name if n == 1 else f"{name}-{n}"
        self.used.add(chosen)
        return self.root / chosen


def _dicom_name(ds: object, index: int) -> str:
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    names = {"1.2.840.10008.5.1.4.1.1.66.4": "seg", "1.2.840.10008.5.1.4.1.1.7": "sc"}
    kind = names.get(sop_class) or ("sr" if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88.") else "obj")
    return f"{index:02d}_{kind}.dcm"


def _write_outputs(image: SourceImage, result: ChestResult, folder: Path,
                   timings: dict[str, float] | None = None) -> list[str]:
    """Write the outputs; ``timings`` receives ms per result object ("write_seg", "write_sr",
    "write_sc") and for encoding and saving the files ("write_files")."""
    if image.dataset is None:
        from pipelines.overlays import write_png_outputs

        return [str(p) for p in write_png_outputs(image, result, folder)]
    from node.results import build_result_objects

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    built: dict[str, float] = {}
    objects = build_result_objects(image.dataset, result, image=image, timings_ms=built)
    started = time.perf_counter()
    for i, ds in enumerate(objects, start=1):
        path = folder / _dicom_name(ds, i)
        ds.save_as(path, enforce_file_format=True)
        written.append(str(path))
    if timings is not None:
        timings.update({f"write_{name}": ms for name, ms in built.items()})
        timings["write_files"] = round((time.perf_counter() - started) * 1000.0, 2)
    return written


def _summary(result: ChestResult, outputs: list[str]) -> str:
    head = f"{result.source}: {result.projection.projection.value} ({result.projection.probability:.2f})"
    if not result.analysed:
        return f"{head}, not analysed: {result.not_analysed_reason}"
    parts = [head]
    if result.covid is not None:
        call = "positive" if result.covid.positive else "negative"
        parts.append(f"COVID-19 {result.covid.probability:.3f} {call}")
    if result.lungs is not None:
        mm2 = "" if result.lungs.area_mm2 is None else f" / {result.lungs.area_mm2:.0f} mm2"
        parts.append(f"lungs {result.lungs.area_px} px{mm2}")
    if result.ggo is not None and not result.ggo.detected and result.ggo.decision is not None:
        parts.append(f"GGO not detected (score {result.ggo.decision.score:.3f} < "
                     f"{result.ggo.decision.threshold:.3f})")
    elif result.ggo is not None:
        extent = "n/a" if result.ggo.extent_percent is None else f"{result.ggo.extent_percent:.1f}%"
        parts.append(f"GGO {extent}, {len(result.ggo.boxes)} box(es)")
    parts.append(f"{len(outputs)} file(s) written")
    return ", ".join(parts)


def _report_error(source: Path | str, reason: str, as_json: bool) -> None:
    print(f"cxr-node analyze: error: {source}: {reason}", file=sys.stderr)
    if as_json:
        print(json.dumps({"source": str(source), "error": reason}), flush=True)


def _analyze(
    pipeline: ChestPipeline, sources: list[Path], images: list[SourceImage], decode_ms: list[float]
) -> Iterator[tuple[Path, SourceImage, ChestResult | Exception, float]]:
    """Yield (path, image, result or exception, decode ms): one batch, or one by one if the batch fails.

    A model failing on one odd image must not cost the others their results.
    """
    results: list[ChestResult | Exception]
    try:
        results = list(pipeline.analyze_batch(images))
    except Exception:  # noqa: BLE001 - retried image by image below, each failure then reported
        log.warning("batch of %d failed; analysing its images one by one", len(images), exc_info=True)
        results = []
        for image in images:
            try:
                results.append(pipeline.analyze(image))
            except Exception as exc:  # noqa: BLE001 - reported as this file's error line
                results.append(exc)
    yield from zip(sources, images, results, decode_ms, strict=True)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.errors import ImageDecodeError, PipelineError

    if args.batch_size < 1:
        print("cxr-node analyze: error: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_UNUSABLE
    inputs = list(_collect(args.paths, args.out))
    if not inputs:
        print("cxr-node analyze: error: no DICOM/PNG/JPEG file found in the given paths", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"cxr-node analyze: error: cannot create output folder {args.out}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    from pipelines.chest import ChestPipeline
    from pipelines.image import load_image
    from pipelines.runtime import freeze_loaded_heap

    models = args.models if args.models is not None else default_models_dir()
    try:
        pipeline = ChestPipeline.from_models_dir(
            models, device=None if args.device == "auto" else args.device,
            state_dir=args.state_dir, batch_size=args.batch_size,
            use_view_position=not args.ignore_view_position, use_body_part=not args.ignore_body_part,
            use_lung_field=not args.ignore_lung_field)
    except PipelineError as exc:
        print(f"cxr-node analyze: error: cannot load the models from {models.resolve()}: {exc}",
              file=sys.stderr)
        return EXIT_UNUSABLE
    freeze_loaded_heap()  # as the worker does: full collections skip the loaded models

    failed = 0
    outputs = _Outputs(args.out)
    progress = tqdm(total=len(inputs), unit="image", file=sys.stderr,
                    disable=len(inputs) < PROGRESS_MIN_IMAGES)
    for start in range(0, len(inputs), args.batch_size):
        images, sources, decode_ms = [], [], []
        for path, problem in inputs[start:start + args.batch_size]:
            if problem is not None:
                failed += 1
                _report_error(path, problem, args.json)
                progress.update(1)
                continue
            try:
                started = time.perf_counter()
                images.append(load_image(path))
                decode_ms.append((time.perf_counter() - started) * 1000.0)
                sources.append(path)
            except ImageDecodeError as exc:
                failed += 1
                # the message already names the file
                _report_error(path, str(exc).removeprefix(f"{path}: "), args.json)
                progress.update(1)
        if not images:
            continue
        for path, image, result, decode in _analyze(pipeline, sources, images, decode_ms):
            if isinstance(result, Exception):
                failed += 1
                phi = identity_values(image.dataset)  # a message may quote them: redacted
                _report_error(path, f"analysis failed: {safe_message(result, phi)}", args.json)
                progress.update(1)
                continue
            try:
                started = time.perf_counter()
                written = _write_outputs(image, result, outputs.folder(path), result.timings_ms)
                result.timings_ms["decode"] = round(decode, 2)
                result.timings_ms["write"] = round((time.perf_counter() - started) * 1000.0, 2)
            except Exception as exc:  # a writer refusing one image must not stop the others
                failed += 1
                log.debug("writing results for %s failed", path, exc_info=True)
                phi = identity_values(image.dataset)
                reason = f"cannot write the result objects: {safe_message(exc, phi)}"
                _report_error(path, reason, args.json)
                progress.update(1)
                continue
            line = json.dumps(result.to_json(outputs=written)) if args.json else _summary(result, written)
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
            progress.update(1)
    progress.close()
    return EXIT_SOME_FAILED if failed else EXIT_OK
