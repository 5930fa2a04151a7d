"""expclip audit at scale: a --rows training cache against an --against test cache, rows/s and peak RSS per device.

Builds (untimed) two synthetic caches in a temporary folder under --workdir
(removed at the end): "train", --rows x 768 float16 CLIP image features
(ViT-L/14 width; 1 M rows = 1.5 GB, generated a chunk at a time into one
preallocated float16 array), and "test", --against rows, under one CLIP key.
--planted train rows, at known positions, are test rows plus small noise
(cosine ~0.999); every other row is a random Gaussian vector (cosine with any
other ~0 +- 0.04), so the planted pairs are exactly what `audit` at its 0.95
threshold must find. Then runs `audit([train], [test], within=False)` once per
device (`cpu`, and `cuda` when there is one), each in a fresh process of this
script that reports its own wall time and peak RSS (VmHWM), with both caches'
pages evicted from the page cache first (cold reads). CUDA's start is paid
before the timed call. rows/s = train rows / wall seconds of the audit call.
Goal: 1 M x 50 k within a few minutes on one GPU; on a CPU, streamed in blocks
of --block-rows, the peak RSS stays below both caches' features as float32
(the bound printed; "baseline" is the child's RSS after imports, before audit).
Measured (cold reads; tables in benchmarks/RESULTS.md): one H100, 1 M x 50 k in 10.7 s (93,319 rows/s),
peak RSS 1.58 GiB (bound 3.00 GiB ok), GPU 0.86 GiB, 100/100 planted pairs. On CPUs the audit multiplies
with torch: faiss-cpu's bundled OpenBLAS 0.3.15 takes these Xeons for Prescott (SSE3 kernels) and reached
23 GFLOP/s where torch reaches ~120 (faiss's range search gave 301 rows/s at 100 k x 50 k on the 2-core VM).
Building the 1 M-row cache takes ~27 s and a 4.9 GiB peak: write_arrays holds more copies of the 1.4 GiB
array (PartialFolder.write_shard's `astype` copies even at the same dtype).
Run: python benchmarks/audit_scale.py [--rows 1000000] [--against 50000] [--planted 100]
     [--devices cpu,cuda] [--workdir DIR] [--block-rows 65536]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from machine import describe  # benchmarks/, beside this script
from pagecache import evict  # benchmarks/, beside this script
from rich.console import Console
from rich.table import Table

from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.stages.audit import audit
from expclip.stages.shared.scoring import BLOCK_ROWS

D, KEY = 768, "ViT-L-14@openai"
CLIP_ATTRS = {"model": "ViT-L-14", "pretrained": "openai", "transform": "model", "logit_scale": 100.0, "embed_dim": D}
GEN_ROWS = 16_384  # rows generated (as float32) at a time
NOISE = 0.05  # per-component noise of a planted row (unit-variance features): cosine ~ 1 / sqrt(1 + NOISE^2)
TARGET_ROWS, TARGET_AGAINST = 1_000_000, 50_000


@dataclass
class Run:
    device: str
    rows: int
    against: int
    wall: float  # seconds of the audit call
    baseline_rss: int  # bytes: the child's RSS after imports, before audit
    peak_rss: int  # bytes: the child's VmHWM
    gpu_peak: int  # bytes: torch's peak allocation on the GPU (0 on a CPU)
    found: int  # pairs audit found
    planted_found: int  # of them, planted pairs
    planted: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall

    @property
    def exact(self) -> bool:
        return self.found == self.planted_found == self.planted


def random_f16(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Standard-normal float16 rows, generated GEN_ROWS at a time into one preallocated array."""
    out = np.empty((rows, D), dtype=np.float16)
    for a in range(0, rows, GEN_ROWS):
        out[a:a + GEN_ROWS] = rng.standard_normal((min(GEN_ROWS, rows - a), D), dtype=np.float32)
    return out


def write_cache(path: Path, prefix: str, image: np.ndarray) -> None:
    items = fmt.Items(ids=[f"{prefix}/{i}" for i in range(len(image))], labels=np.full(len(image), -1),
                      class_names=[])
    write_arrays(path, items, file_attrs={"dataset": prefix, "source": "synthetic"},
                 aligned={fmt.image_path(KEY): (image, CLIP_ATTRS)})


def build(folder: Path, rows: int, against: int, planted: int) -> tuple[Path, Path, set[tuple[str, str]]]:
    """The train and test caches, and the planted (train id, test id) pairs."""
    rng = np.random.default_rng(0)
    test = random_f16(rng, against)
    at_train = rng.choice(rows, planted, replace=False)
    at_test = rng.choice(against, planted, replace=False)
    train = random_f16(rng, rows)
    noise = rng.standard_normal((planted, D), dtype=np.float32) * NOISE
    train[at_train] = test[at_test].astype(np.float32) + noise
    write_cache(folder / "test.h5", "test", test)
    del test
    write_cache(folder / "train.h5", "train", train)
    return folder / "train.h5", folder / "test.h5", {(f"train/{i}", f"test/{j}") for i, j in zip(at_train, at_test)}


def vm(field: str) -> int:
    """A field of this process's /proc/self/status in bytes (VmRSS now, VmHWM its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(device: str, train: str, test: str, block_rows: int) -> None:
    """In a fresh process: one timed audit; prints its wall time, RSS and pairs as one JSON line."""
    if device == "cuda":
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    baseline = vm("VmRSS")
    started = time.perf_counter()
    report = audit([Path(train)], [Path(test)], within=False, block_rows=block_rows, device=device)
    wall = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    print(json.dumps({"wall": wall, "baseline_rss": baseline, "peak_rss": vm("VmHWM"), "gpu_peak": gpu_peak,
                      "pairs": [[p["a_id"], p["b_id"]] for p in report["pairs"]]}))


def measure(device: str, train: Path, test: Path, rows: int, against: int, block_rows: int,
            planted: set[tuple[str, str]]) -> Run:
    for path in (train, test):
        evict(path)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", device, str(train), str(test),
                           str(block_rows)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"audit on {device} failed:\n{done.stderr}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    pairs = {tuple(p) for p in found["pairs"]}
    return Run(device, rows, against, found["wall"], found["baseline_rss"], found["peak_rss"], found["gpu_peak"],
               len(found["pairs"]), len(pairs & planted), len(planted))


def report(console: Console, runs: list[Run], block_rows: int) -> None:
    gib = 2**30
    table = Table(title=f"expclip audit, train vs test (within=False), {D}-wide float16 features, "
                        f"blocks of {block_rows:,} rows, cold page cache")
    for col in ("device", "rows", "against", "wall s", "rows/s", "baseline RSS GiB", "peak RSS GiB", "GPU peak GiB",
                "pairs found / planted", f"est. {TARGET_ROWS / 1e6:g} M x {TARGET_AGAINST / 1e3:g} k",
                "RSS < both caches as float32"):
        table.add_column(col, justify="left" if col in ("device", "RSS < both caches as float32") else "right")
    for r in runs:
        bound = (r.rows + r.against) * D * 4
        estimate = r.wall * (TARGET_ROWS * TARGET_AGAINST) / (r.rows * r.against)
        pairs = f"{r.planted_found} / {r.planted}" + ("" if r.exact else f" MISMATCH ({r.found} found)")
        table.add_row(r.device, f"{r.rows:,}", f"{r.against:,}", f"{r.wall:.1f}", f"{r.rows_per_s:,.0f}",
                      f"{r.baseline_rss / gib:.2f}", f"{r.peak_rss / gib:.2f}",
                      f"{r.gpu_peak / gib:.2f}" if r.device == "cuda" else "", pairs,
                      f"{estimate:,.0f} s ({estimate / 60:.1f} min)",
                      f"{bound / gib:.2f} GiB {'ok' if r.peak_rss < bound else 'MISSED'}")
    console.print(table)
    console.print(f"[dim]wall: the audit call alone (index build, cold reads of both caches, search, pair records). "
                  f"est.: wall scaled by the pairs compared, {TARGET_ROWS:,} x {TARGET_AGAINST:,} / (rows x against). "
                  f"baseline RSS: the child after importing torch, faiss and expclip (and CUDA's start).[/dim]")


def main(argv: list[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=TARGET_ROWS, help="rows of the audited (train) cache")
    parser.add_argument("--against", type=int, default=TARGET_AGAINST, help="rows of the indexed (test) cache")
    parser.add_argument("--planted", type=int, default=100, help="near-duplicates of test rows planted in train")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu",
                        help="comma-separated devices to audit on (default: cpu, and cuda when there is one)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the temporary caches (default: /tmp)")
    parser.add_argument("--block-rows", type=int, default=BLOCK_ROWS, help="audit's rows streamed per block")
    args = parser.parse_args(argv)
    if not 0 <= args.planted <= min(args.rows, args.against):
        parser.error("--planted must be at most --rows and --against")
    console = Console(width=220)
    console.print(f"[bold]expclip audit at scale[/bold] on {describe()} | faiss {faiss.__version__}")
    folder = Path(tempfile.mkdtemp(prefix="expclip-audit-", dir=args.workdir))
    try:
        started = time.perf_counter()
        train, test, planted = build(folder, args.rows, args.against, args.planted)
        console.print(f"built {args.rows:,}-row train ({train.stat().st_size / 1e9:.2f} GB) and {args.against:,}-row "
                      f"test caches in {folder} in {time.perf_counter() - started:.1f} s (not timed)")
        runs = []
        for device in args.devices.split(","):
            runs.append(measure(device, train, test, args.rows, args.against, args.block_rows, planted))
            console.print(f"{device}: {runs[-1].wall:.1f} s, {runs[-1].rows_per_s:,.0f} rows/s")
        report(console, runs, args.block_rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return runs


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
