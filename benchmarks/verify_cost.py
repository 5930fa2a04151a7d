"""What the cache's checksums cost: reading the paper-size training features with and without Fletcher-32.

Writes the paper-size training cache (48,640 x 768 CLIP image + 48,640 x 4,096
teacher features, float16, as benchmarks/stage_two.py does) with `write_arrays`,
so every dataset is chunked with Fletcher-32 and the file carries its item,
metadata and string checksums; then a copy with the same chunks whose feature
groups have no Fletcher-32 filter (its small checksums recomputed, so that
CacheReader reads it like the first). Times, best of --repeats: reading each
group whole through CacheReader with the page cache warm and cold (the file's
pages evicted with posix_fadvise first), fit-head's whole read (`InMemory(select(...))`:
both groups to float32, teacher normalised), and `expclip cache verify` (the
streamed sha256 of each group, and of the whole file). --chunk-sizes adds the
teacher group's warm read with and without Fletcher-32 for other chunk sizes
and HDF5 chunk-cache sizes (whether the layout explains the overhead).
Run: python benchmarks/verify_cost.py [--repeats 3] [--dir DIR] [--chunk-sizes]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from machine import cpu_model  # benchmarks/, beside this script
from pagecache import evict  # benchmarks/, beside this script
from rich.console import Console
from rich.table import Table

from expclip.cache import format as fmt
from expclip.cache.checksums import (
    METADATA,
    STRINGS,
    STRINGS_SHA256,
    UNCHECKED_ROOT_ATTRS,
    metadata_digest,
    ranges_digest,
    stored_digest,
    string_ranges,
)
from expclip.cache.reader import CacheReader
from expclip.cache.verify import verify_cache
from expclip.cache.writer import write_arrays
from expclip.stages.fit_head.data import InMemory, select

N, D, DT = 48_640, 768, 4096  # CAER-S training faces, ViT-L/14 CLIP, BLIP-2 Flan-T5-XXL
IMAGE, TEACHER = fmt.image_path("ViT-L-14@openai"), fmt.teacher_path("Salesforce_blip2-flan-t5-xxl", "paper")


def write_checked(path: Path) -> None:
    rng = np.random.default_rng(0)
    items = fmt.Items(ids=[f"train/{i}.png" for i in range(N)], labels=np.full(N, -1), class_names=[])
    write_arrays(
        path,
        items,
        file_attrs={"dataset": "CAER-S", "source": "synthetic"},
        aligned={
            IMAGE: (
                rng.standard_normal((N, D), dtype=np.float32).astype(np.float16),
                {"model": "ViT-L-14", "logit_scale": 100.0},
            ),
            TEACHER: (
                rng.standard_normal((N, DT), dtype=np.float32).astype(np.float16),
                {"model": "blip2", "instruction": "x"},
            ),
        },
    )


def write_unchecked(source: Path, path: Path) -> None:
    """The same features, chunks and attributes, the feature groups without Fletcher-32."""
    with h5py.File(source, "r") as src, h5py.File(path, "w", libver=("v110", "v110")) as out:
        for k, v in src.attrs.items():
            if k not in UNCHECKED_ROOT_ATTRS:
                out.attrs[k] = v
        for group in ("items", "failures"):
            src.copy(src[group], out, name=group)
        for name in (IMAGE, TEACHER):
            ds = src[name]
            copy = out.create_dataset(name, shape=ds.shape, dtype=ds.dtype, chunks=ds.chunks)
            for a in range(0, ds.shape[0], ds.chunks[0] * 16):
                copy[a : a + ds.chunks[0] * 16] = ds[a : a + ds.chunks[0] * 16]
            for k, v in ds.attrs.items():
                copy.attrs[k] = v
        out.attrs[METADATA] = metadata_digest(out)
        out.flush()
        ranges = string_ranges(path, out)
        out.attrs[STRINGS] = ranges
        out.attrs[STRINGS_SHA256] = np.bytes_(ranges_digest(path, ranges))
        out.flush()
        out.attrs["complete"] = True


def best(repeats: int, run, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def read_times(path: Path, repeats: int) -> dict[str, float]:
    keys = {IMAGE: ("image", ("ViT-L-14@openai",)), TEACHER: ("teacher", ("Salesforce_blip2-flan-t5-xxl", "paper"))}
    found = {}
    with CacheReader(path) as r:
        for name, (method, args) in keys.items():
            read = getattr(r, method)
            found[("warm", name)] = best(repeats, lambda read=read, args=args: read(*args))
            found[("cold", name)] = best(repeats, lambda read=read, args=args: read(*args), before=lambda: evict(path))
    found["fit-head"] = best(repeats, lambda: InMemory(select([path]), torch.device("cpu")))
    return found


def chunk_sizes(folder: Path, repeats: int) -> Table:
    """Teacher-sized reads (page cache warm) for several chunk sizes and chunk caches, without and with Fletcher-32."""
    data = np.random.default_rng(1).standard_normal((N, DT), dtype=np.float32).astype(np.float16)
    table = Table(title="teacher group, page cache warm: chunk size and HDF5 chunk cache against Fletcher-32")
    for col in ("chunk rows (MiB)", "chunk cache MiB", "read s without", "read s with", "overhead %"):
        table.add_column(col, justify="right")
    for rows in (128, 512, 2048):
        times = {}
        for fletcher in (False, True):
            path = folder / f"chunks-{rows}-{fletcher}.h5"
            with h5py.File(path, "w", libver=("v110", "v110")) as f:
                f.create_dataset("x", data=data, chunks=(rows, DT), fletcher32=fletcher)
            for cache_mib in (0, 1, 64):
                with h5py.File(path, "r", rdcc_nbytes=cache_mib << 20) as f:
                    times[fletcher, cache_mib] = best(repeats, lambda f=f: f["x"][()])
            path.unlink()
        for cache_mib in (0, 1, 64):
            a, b = times[False, cache_mib], times[True, cache_mib]
            table.add_row(
                f"{rows} ({rows * DT * 2 / 2**20:g})",
                str(cache_mib),
                f"{a:.3f}",
                f"{b:.3f}",
                f"{100 * (b / a - 1):+.0f}",
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the two caches (default: a temporary one)")
    parser.add_argument("--chunk-sizes", action="store_true", help="also time other chunk and chunk-cache sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        checked, unchecked = Path(tmp) / "checked.h5", Path(tmp) / "unchecked.h5"
        start = time.perf_counter()
        write_checked(checked)
        write_unchecked(checked, unchecked)
        print(f"wrote both caches in {time.perf_counter() - start:.1f} s")
        without, with_ = read_times(unchecked, args.repeats), read_times(checked, args.repeats)
        with h5py.File(checked, "r") as f:
            shapes = {name: f[name].shape for name in (IMAGE, TEACHER)}
            chunks = {name: f[name].chunks[0] for name in shapes}
            sha = {name: best(args.repeats, lambda name=name: stored_digest(f[name])) for name in shapes}
        verify_s = best(args.repeats, lambda: verify_cache(checked))
        sizes = chunk_sizes(Path(tmp), args.repeats) if args.chunk_sizes else None
    table = Table(
        title=f"Reading the paper-size training features on {cpu_model()} "
        f"({os.cpu_count()} CPUs; best of {args.repeats})"
    )
    for col in ("what", "rows", "MB", "read s without", "read s with", "overhead %", "cache verify s"):
        table.add_column(col, justify="left" if col == "what" else "right")

    def row(what, rows, mb, key, verify=""):
        a, b = without[key], with_[key]
        table.add_row(
            what, f"{rows:,}", f"{mb:,.0f}" if mb else "", f"{a:.3f}", f"{b:.3f}", f"{100 * (b / a - 1):+.0f}", verify
        )

    mbs = {name: np.prod(shape) * 2 / 1e6 for name, shape in shapes.items()}
    for cache in ("warm", "cold"):
        for name, shape in shapes.items():
            what = f"{name.split('/')[0]} {shape[0]:,} x {shape[1]:,} ({chunks[name]}-row chunks), page cache {cache}"
            row(what, shape[0], mbs[name], (cache, name), f"{sha[name]:.2f}" if cache == "warm" else "")
    row("fit-head's whole read (both groups to float32)", N, sum(mbs.values()), "fit-head", f"{verify_s:.2f}")
    console = Console(width=200)
    console.print(table)
    if sizes is not None:
        console.print(sizes)


if __name__ == "__main__":
    main()
