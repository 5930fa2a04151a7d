"""Writing HDF5 the way the format says: UTF-8 strings, plain attributes, /items, /failures, whole files.

A finished cache's numeric datasets are chunked with the Fletcher-32 filter
(`write_checked`), and /items and /failures carry `sha256` over their values
(docs/cache-format.md, *Checksums*).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from expclip.cache import format as fmt
from expclip.cache.atomic import write_atomically
from expclip.cache.checksums import SHA256, values_digest

CHUNK_BYTES = 1 << 20  # a cache's datasets are chunked by about this many bytes of rows


def write_h5(target: Path, fill: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file whole or not at all (see expclip.cache.atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            fill(f)

    write_atomically(target, write)


def write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype(fmt.STR_DTYPE))


def set_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    """Attributes as the format stores them: lists of strings as UTF-8 string arrays."""
    for k, v in attrs.items():
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
            v = np.array(v, dtype=h5py.string_dtype(fmt.STR_DTYPE))
        obj.attrs[k] = v


def row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """Chunks of whole rows, a power of two of them, at most CHUNK_BYTES each; None for an empty dataset.

    Powers of two make the chunks of every group line up: a block of rows
    starting and ending at a multiple of the largest chunk reads whole chunks
    of each group (streamed training reads such blocks, docs/cache-format.md).
    """
    if not shape or 0 in shape:
        return None
    row_elements = max(1, int(np.prod(shape[1:])))
    fit = max(1, CHUNK_BYTES // (row_elements * itemsize))
    return (min(shape[0], 1 << (fit.bit_length() - 1)), *shape[1:])


def create_checked(group: h5py.Group, name: str, shape: tuple[int, ...], dtype,
                   chunks: tuple[int, ...] | None = None) -> h5py.Dataset:
    """A numeric dataset whose chunks HDF5 checks on every read (Fletcher-32)."""
    chunks = chunks or row_chunks(tuple(shape), np.dtype(dtype).itemsize)
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fletcher32=chunks is not None)


def write_checked(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    ds = create_checked(group, name, data.shape, data.dtype)
    if data.size:
        ds[...] = data
    return ds


def write_items(f: h5py.File, items: fmt.Items, ok: np.ndarray) -> None:
    g = f.create_group("items")
    write_strings(g, "id", items.ids)
    write_checked(g, "label", np.asarray(items.labels, dtype=np.int64))
    write_strings(g, "class_names", items.class_names)
    write_checked(g, "ok", ok.astype(bool))
    if items.frame_index is not None:
        write_checked(g, "frame_index", np.asarray(items.frame_index, dtype=np.int32))
        write_checked(g, "num_frames", np.asarray(items.num_frames, dtype=np.int32))
    g.attrs[SHA256] = values_digest(g)


def write_failures(f: h5py.File, failures: dict[str, str]) -> None:
    g = f.create_group("failures")
    write_strings(g, "id", list(failures))
    write_strings(g, "reason", list(failures.values()))
    g.attrs[SHA256] = values_digest(g)
