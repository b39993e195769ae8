"""Ingest benchmark: images/s received by the node with durable acknowledgement, side by side
with a bare pynetdicom storage SCP that only writes the received bytes to files (no fsync, no
database): the Python-level limit of the receive path.

Both SCPs run in their own process; the senders are pynetdicom SCU processes sending pre-encoded
Part 10 files (``send_c_store(path)`` sends the bytes as stored, so the sender costs the same for
both). After each node run the benchmark checks that every acknowledged instance is in the
database and in the store.

    .venv/bin/python bench/ingest.py                      # both sizes, 1 and 4 associations
    .venv/bin/python bench/ingest.py --sizes small --count 400 --associations 4 --repeat 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SIZES = {"small": (256, 256, 8), "large": (2048, 2048, 16)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_files(folder: Path, count: int, rows: int, cols: int, bits: int) -> list[Path]:
    """Synthetic DX images (one study per 10 images), written once as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = rng.integers(0, 2**bits - 1, size=(rows, cols), dtype=dtype).tobytes()
    paths = []
    study = series = ""
    for i in range(count):
        if i % 10 == 0:
            study, series = generate_uid(), generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
        ds.SOPClassUID = DX_PRESENTATION
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.Modality = "DX"
        ds.PatientID = "BENCH"
        ds.AccessionNumber = f"B{i // 10}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- the bare SCP (child process) -------------------------------------------------------------
def bare_scp(port: int, out: str) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    counter = [0]

    def handle(event: evt.Event) -> int:
        counter[0] += 1
        with open(os.path.join(out, f"{counter[0]}_{os.getpid()}.dcm"), "wb") as f:
            f.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.maximum_associations = 16
    ae.maximum_pdu_size = 0
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle)])


# -- senders (child processes) ----------------------------------------------------------------
def send_files(port: int, aet: str, paths: list[str], queue: mp.Queue) -> None:
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # files go out as stored, no decode/encode
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ok = 0
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=aet)
        if assoc.is_established:
            for path in paths:
                status = assoc.send_c_store(path)
                if status and status.Status == 0:
                    ok += 1
            assoc.release()
    except Exception as exc:  # reported as a short count by the parent, not a hang
        print(f"sender: {exc.__class__.__name__}: {exc}", file=sys.stderr)
    queue.put(ok)


def run_senders(port: int, aet: str, paths: list[Path], associations: int) -> tuple[float, int]:
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    shares = [[str(p) for p in paths[i::associations]] for i in range(associations)]
    procs = [ctx.Process(target=send_files, args=(port, aet, share, queue)) for share in shares]
    start = time.perf_counter()
    for p in procs:
        p.start()
    acked = sum(queue.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(30)
    return elapsed, acked


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_bare(files: list[Path], associations: int, work: Path) -> float:
    out = work / "bare"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(port), str(out)])
    try:
        wait_port(port)
        elapsed, acked = run_senders(port, "BARE", files, associations)
    finally:
        stop(proc)
    if acked != len(files):
        raise RuntimeError(f"bare SCP acknowledged {acked} of {len(files)}")
    return len(files) / elapsed


def run_node(files: list[Path], associations: int, work: Path, durability: str) -> float:
    data = work / "node"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    config = work / "node.toml"
    config.write_text(
        f'[node]\nae_title = "CXRNODE"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\n'
        f'durability = "{durability}"\nstudy_stable_seconds = 3600\nmin_free_disk_mb = 64\n'
        f'log_level = "WARNING"\n[worker]\nworkers = 0\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli.main", "serve", "--config", str(config)], cwd=REPO
    )
    try:
        wait_port(port)
        elapsed, acked = run_senders(port, "CXRNODE", files, associations)
    finally:
        stop(proc)
    # Every acknowledged instance is in the database and in the store.
    sys.path.insert(0, str(REPO))
    from node.config import load_config
    from node.service import open_repository, open_store

    cfg = load_config(config)
    repo, store = open_repository(cfg), open_store(cfg)
    n = repo.instance_count()
    missing = [
        f
        for f in files
        if not store.path(store.relpath(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)).exists()
    ]
    repo.engine.dispose()
    if acked != len(files) or n != len(files) or missing:
        raise RuntimeError(f"node: acked {acked}, rows {n}, files missing {len(missing)} of {len(files)}")
    return len(files) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "large"], choices=sorted(SIZES))
    parser.add_argument("--count", type=int, default=0, help="images per run (default: 400 small, 60 large)")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--durability", nargs="+", default=["fsync", "os"], choices=["fsync", "os"])
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs; the median is reported")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), args.bare_scp[1])
        return 0
    work = args.work or Path(
        tempfile.mkdtemp(prefix="cxr-bench-", dir=REPO / "var" if (REPO / "var").is_dir() else None)
    )
    print(f"{'size':<22} {'assoc':>5} {'mode':<10} {'node img/s':>10} {'bare img/s':>10} {'ratio':>6}")
    try:
        for size in args.sizes:
            rows, cols, bits = SIZES[size]
            count = args.count or (400 if size == "small" else 60)
            files = make_files(work / f"files-{size}", count, rows, cols, bits)
            for assoc in args.associations:
                for durability in args.durability:
                    node_rates, bare_rates = [], []
                    for _ in range(args.repeat):
                        for rates, run in (
                            (bare_rates, partial(run_bare, files, assoc, work)),
                            (node_rates, partial(run_node, files, assoc, work, durability)),
                        ):
                            try:
                                rates.append(run())
                            except (RuntimeError, TimeoutError) as exc:
                                print(f"# run failed, left out of the median: {exc}", flush=True)
                    if not node_rates or not bare_rates:
                        continue
                    node, bare = statistics.median(node_rates), statistics.median(bare_rates)
                    label = f"{rows}x{cols} {bits}-bit x{count}"
                    print(
                        f"{label:<22} {assoc:>5} {durability:<10} {node:>10.1f} {bare:>10.1f} "
                        f"{node / bare:>6.2f}",
                        flush=True,
                    )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
