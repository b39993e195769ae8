"""Ingest benchmark: images/s acknowledged by the node (durability "fsync": every acknowledged
instance is fsynced and recorded) side by side with a bare pynetdicom storage SCP that only
writes the received bytes to files (no fsync, no database), in one run, for the senders sites
use: dcmtk ``dcmsend`` and ``storescu`` with their default options, and a pynetdicom SCU.

The node runs once per ``--listener-processes`` value (``[node] listener_processes``; default 0, the
node's default: one per CPU, marked *, and 1: the serve process alone).
The SCPs run in their own processes on loopback and stay up for the whole run; each round sends
files whose SOP Instance UIDs are fresh (rewritten in place before the round), so the node never
takes the duplicate path. After each node round every file of the round is checked to be in the
node's database and store.

    .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --sizes 256 --senders dcmsend --associations 1 --repeat 3
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
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.config import AUTO_LISTENER_PROCESSES, load_config, usable_cpus
from node.process import open_repository, open_store

REPO = Path(__file__).resolve().parents[1]
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
# rows, columns, bits, default count
SIZES = {"64": (64, 64, 8, 200), "256": (256, 256, 8, 200), "2048": (2048, 2048, 16, 24)}
SENDERS = ("dcmsend", "storescu", "pynetdicom")
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"  # pydicom's root + a fixed branch; fixed-length UIDs


def uid(kind: int, round_no: int, index: int) -> str:
    return f"{UID_ROOT}.{kind}.{1_000_000 + round_no}.{1_000_000 + index}"  # no leading zeros (PS3.5 9.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_files(folder: Path, count: int, rows: int, cols: int, bits: int, round_no: int) -> list[Path]:
    """Synthetic DX images (one study per 10 images) with fixed-length UIDs of ``round_no``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = rng.integers(0, 2**bits - 1, size=(rows, cols), dtype=dtype).tobytes()
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
        ds.SOPClassUID = DX_PRESENTATION
        ds.SOPInstanceUID = uid(1, round_no, i)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = uid(2, round_no, i // 10)
        ds.SeriesInstanceUID = uid(3, round_no, i // 10)
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


def renew_uids(paths: list[Path], old_round: int, new_round: int) -> None:
    """Fresh SOP/Study/Series Instance UIDs: same length, so the header bytes are patched in place."""
    for i, path in enumerate(paths):
        with path.open("r+b") as f:
            head = f.read(4096)
            for kind, index in ((1, i), (2, i // 10), (3, i // 10)):
                head = head.replace(
                    uid(kind, old_round, index).encode(), uid(kind, new_round, index).encode()
                )
            f.seek(0)
            f.write(head)


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


# -- senders ----------------------------------------------------------------------------------
def pynetdicom_send(port: int, aet: str, paths: list[str], queue: mp.Queue) -> None:
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


def send(sender: str, port: int, aet: str, paths: list[Path], associations: int) -> float:
    """Seconds to send every path over ``associations`` parallel associations."""
    shares = [[str(p) for p in paths[i::associations]] for i in range(associations)]
    start = time.perf_counter()
    if sender == "pynetdicom":
        ctx = mp.get_context("fork")
        queue: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=pynetdicom_send, args=(port, aet, share, queue)) for share in shares]
        for p in procs:
            p.start()
        acked = sum(queue.get(timeout=600) for _ in procs)
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join(30)
        if acked != len(paths):
            raise RuntimeError(f"{sender} -> {aet}: {acked} of {len(paths)} acknowledged")
        return elapsed
    tool = shutil.which(sender)
    if tool is None:
        raise RuntimeError(f"{sender} not found (Debian package dcmtk)")
    runs = [
        subprocess.Popen(
            [tool, "-aet", "BENCHSCU", "-aec", aet, "127.0.0.1", str(port), *share],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for share in shares
    ]
    errors = [(run.wait(600), run.stderr.read().decode(errors="replace")[-300:]) for run in runs]
    elapsed = time.perf_counter() - start
    failed = [err for rc, err in errors if rc != 0]
    if failed:
        raise RuntimeError(f"{sender} -> {aet} failed: {failed[0]}")
    return elapsed


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def wait_echo(port: int, aet: str, timeout: float = 120.0) -> None:
    """Until the SCP answers a C-ECHO: with listener processes the port accepts connections (the
    kernel queues them) before any process serves them, and the first round would time their start."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title=aet)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no C-ECHO answer on port {port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def column_name(listener_processes: int) -> str:
    """A node's column: its listener processes, * for the default (0: one per CPU)."""
    if listener_processes == 0:
        return f"node{min(usable_cpus(), AUTO_LISTENER_PROCESSES)}* img/s"
    return f"node{listener_processes} img/s"


class Node:
    """``cxr-node serve`` with durability "fsync", no workers, no scheduling pressure."""

    def __init__(self, work: Path, extra: list[str], listener_processes: int) -> None:
        self.port = free_port()
        data = work / f"node-{listener_processes}"
        shutil.rmtree(data, ignore_errors=True)
        self.config = work / f"node-{listener_processes}.toml"
        settings = {"ae_title": '"CXRNODE"', "host": '"127.0.0.1"', "port": str(self.port),
                    "data_dir": f'"{data}"', "durability": '"fsync"', "study_stable_seconds": "36000",
                    "min_free_disk_mb": "64", "log_level": '"WARNING"',
                    "listener_processes": str(listener_processes)}
        settings.update(line.split("=", 1) for line in extra)
        self.config.write_text(
            "[node]\n" + "".join(f"{k.strip()} = {v.strip()}\n" for k, v in settings.items())
            + "[worker]\nworkers = 0\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "serve", "--config", str(self.config)], cwd=REPO
        )
        wait_echo(self.port, "CXRNODE")
        cfg = load_config(self.config)
        self.repo, self.store = open_repository(cfg), open_store(cfg)

    def check(self, paths: list[Path], rows_before: int) -> None:
        """Every sent instance is new, recorded, and its file is in the store."""
        if self.repo.instance_count() != rows_before + len(paths):
            raise RuntimeError("the node did not record every instance of the round as new")
        for path in paths:
            sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            record = self.repo.find_instance(sop_uid)
            if record is None or not self.store.path(record.path).is_file():
                raise RuntimeError(f"node acknowledged {sop_uid} but it is not stored and recorded")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["64", "256", "2048"], choices=list(SIZES))
    parser.add_argument("--senders", nargs="+", default=list(SENDERS), choices=SENDERS)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--count", type=int, default=0, help="images per round (default per size)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per cell; the median is reported")
    parser.add_argument("--listener-processes", type=int, nargs="+", default=[0, 1],
                        help="one node per value of [node] listener_processes, each beside the bare SCP")
    parser.add_argument("--node-set", action="append", default=[], metavar="KEY=VALUE",
                        help='override a [node] key, TOML syntax (e.g. durability="os")')
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), args.bare_scp[1])
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    bare_out = work / "bare"
    bare_out.mkdir(parents=True, exist_ok=True)
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(bare_port), str(bare_out)])
    nodes: dict[int, Node] = {}
    round_no = 0
    try:
        wait_port(bare_port)
        for n in args.listener_processes:
            nodes[n] = Node(work, args.node_set, n)
        header = "".join(f" {column_name(n):>12} {'ratio':>6}" for n in nodes)
        print(f"{'image':<16} {'n':>4} {'assoc':>5} {'sender':<11} {'bare img/s':>10}{header}", flush=True)
        for size in args.sizes:
            rows, cols, bits, default_count = SIZES[size]
            count = args.count or default_count
            files = make_files(work / f"files-{size}", count, rows, cols, bits, round_no)
            for assoc in args.associations:
                for sender in args.senders:
                    bare_rates: list[float] = []
                    node_rates: dict[int, list[float]] = {n: [] for n in nodes}
                    for _ in range(args.repeat):
                        for target in (None, *nodes):  # None: the bare SCP
                            renew_uids(files, round_no, round_no + 1)
                            round_no += 1
                            try:
                                if target is None:
                                    bare_rates.append(count / send(sender, bare_port, "BARE", files, assoc))
                                    for f in bare_out.iterdir():
                                        f.unlink()
                                else:
                                    node = nodes[target]
                                    before = node.repo.instance_count()
                                    seconds = send(sender, node.port, "CXRNODE", files, assoc)
                                    node.check(files, before)
                                    node_rates[target].append(count / seconds)
                            except (RuntimeError, TimeoutError) as exc:
                                name = "bare" if target is None else f"node{target}"
                                print(f"# {name} round failed, left out: {exc}", flush=True)
                    if not bare_rates or not all(node_rates.values()):
                        continue
                    b = statistics.median(bare_rates)
                    cells = "".join(f" {statistics.median(r):>12.1f} {statistics.median(r) / b:>6.2f}"
                                    for r in node_rates.values())
                    label = f"{rows}x{cols} {bits}-bit"
                    print(f"{label:<16} {count:>4} {assoc:>5} {sender:<11} {b:>10.1f}{cells}", flush=True)
    finally:
        stop(bare)
        for node in nodes.values():
            node.repo.engine.dispose()
            stop(node.proc)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
