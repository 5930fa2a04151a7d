"""Writing HDF5 the way the format says: UTF-8 strings, plain attributes, /items, /failures, whole files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from expclip.cache import format as fmt
from expclip.cache.atomic import write_atomically


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


def write_items(f: h5py.File, items: fmt.Items, ok: np.ndarray) -> None:
    g = f.create_group("items")
    write_strings(g, "id", items.ids)
    g.create_dataset("label", data=np.asarray(items.labels, dtype=np.int64))
    write_strings(g, "class_names", items.class_names)
    g.create_dataset("ok", data=ok.astype(bool))
    if items.frame_index is not None:
        g.create_dataset("frame_index", data=np.asarray(items.frame_index, dtype=np.int32))
        g.create_dataset("num_frames", data=np.asarray(items.num_frames, dtype=np.int32))


def write_failures(f: h5py.File, failures: dict[str, str]) -> None:
    g = f.create_group("failures")
    write_strings(g, "id", list(failures))
    write_strings(g, "reason", list(failures.values()))
