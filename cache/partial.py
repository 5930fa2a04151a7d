"""The partial folder `CACHE.h5.partial/`: a run's work in progress, safe for several writers.

No file in it is ever rewritten with one writer's view of the run:

- `manifest.json` is created once (exclusively): folder layout version, format
  version, the items' identity, the shard size and the work units (the first
  row of each; `null`: one unit per shard) that shards never cross;
- `<group>/group.json` is created once per group: its configuration and row
  count (`null`: one row per item, cut into shards of `shard_size`);
- `<group>/layout.json` is created once its encoder is loaded: attributes, row
  shape, dtype;
- `<group>/<start>-<stop>.h5` shard files are written atomically, and any writer
  writes the same rows.

So writers of disjoint shards need no coordination; whoever comes second to a
once-only file reads what the first wrote (see docs/cache-format.md, *Resuming*).
"""

from __future__ import annotations

import bisect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.atomic import DiskFull, create_exclusively, ensure_folder, require_space
from expclip.cache.h5files import write_h5, write_strings

LAYOUT_VERSION = 2  # 1: one manifest.json that every run rewrote (expclip before the several-writer layout)
MANIFEST = "manifest.json"
GROUP = "group.json"
LAYOUT = "layout.json"
SHARD_OVERHEAD = 64 << 10  # bytes an HDF5 shard file may need beyond its rows (generous: refuse early, not mid-write)
Range = tuple[int, int]


@dataclass(frozen=True)
class Layout:
    """What is known of a group once its encoder is loaded."""

    attrs: dict[str, Any]
    row_shape: tuple[int, ...]
    dtype: str


def _plain(value: Any) -> Any:
    """numpy values as JSON can hold them."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ExpclipError(f"{path}: unreadable ({e}); delete the folder {path.parent} and re-run") from None


def _create_json(path: Path, data: dict) -> None:
    """Create `path` once; when another writer was first, its file stands."""
    ensure_folder(path.parent)
    create_exclusively(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=_plain), "utf-8"))


class PartialFolder:
    """Once-only spec files and atomic shard files of one cache's unfinished run."""

    def __init__(self, root: Path, items: fmt.Items, shard_size: int, units: list[int] | None = None):
        """`units`: the first row of each work unit (a tar shard's items), which no shard crosses; None: each
        shard is a unit of its own."""
        self.root, self.items, self.shard_size, self.units = Path(root), items, shard_size, units
        self._specs: dict[str, dict] = {}
        self._layouts: dict[str, Layout] = {}
        manifest = self._manifest()
        if manifest is not None:
            self._adopt(manifest)

    def _adopt(self, manifest: dict) -> None:
        """The run that began the folder cut the shards."""
        self.shard_size, self.units = int(manifest["shard_size"]), manifest.get("units")

    def exists(self) -> bool:
        return self.root.exists()

    def _manifest(self) -> dict | None:
        """The folder's manifest, refusing one of an older layout or of other items."""
        manifest = _read_json(self.root / MANIFEST)
        if manifest is None:
            return None
        if manifest.get("layout") != LAYOUT_VERSION:
            raise ExpclipError(
                f"{self.root}: an unfinished run of an older expclip is in this folder; "
                "finish it with that version, or delete the folder"
            )
        if manifest["items_identity"] != self.items.identity():
            raise ExpclipError(
                f"{self.root}: an unfinished run for different items is in this folder; "
                "finish it with its own source, or delete the folder"
            )
        return manifest

    def _begin(self) -> None:
        """Create the manifest unless a writer did; adopt that writer's shard size."""
        _create_json(self.root / MANIFEST, {
            "layout": LAYOUT_VERSION, "format_version": fmt.FORMAT_VERSION,
            "items_identity": self.items.identity(), "shard_size": self.shard_size, "units": self.units,
        })
        self._adopt(self._manifest())

    def spec(self, path: str) -> dict | None:
        """`{"config": ..., "rows": ...}` of a registered group, else None."""
        if path not in self._specs:
            found = _read_json(self.root / path / GROUP)
            if found is None:
                return None
            self._specs[path] = found
        return self._specs[path]

    def register(self, path: str, config: dict, rows: int | None) -> dict:
        """Record a group's configuration once; returns the spec that stands (maybe another writer's)."""
        if self.spec(path) is None:
            self._begin()
            _create_json(self.root / path / GROUP, {"config": config, "rows": rows})
        return self.spec(path)

    def layout(self, path: str) -> Layout | None:
        if path not in self._layouts:
            found = _read_json(self.root / path / LAYOUT)
            if found is None:
                return None
            self._layouts[path] = Layout(found["attrs"], tuple(found["row_shape"]), found["dtype"])
        return self._layouts[path]

    def describe(self, path: str, layout: Layout) -> Layout:
        """Record a group's layout once; returns the layout that stands (maybe another writer's)."""
        if self.layout(path) is None:
            _create_json(self.root / path / LAYOUT, {
                "attrs": layout.attrs, "row_shape": list(layout.row_shape), "dtype": layout.dtype,
            })
        return self.layout(path)

    def groups(self) -> list[str]:
        """Every registered group, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.relative_to(self.root).as_posix() for p in self.root.rglob(GROUP) if p.is_file())

    def ranges(self, path: str) -> list[Range]:
        """Row ranges of a group's shards: `shard_size` items each (fewer at a unit's end), or one range of
        its own rows."""
        rows = self.spec(path)["rows"]
        if rows is not None:
            return [(0, rows)]
        n, size, starts = len(self.items), self.shard_size, self.units or [0]
        ends = [*starts[1:], n]
        return [(a, min(a + size, end)) for first, end in zip(starts, ends) for a in range(first, end, size)]

    def unit(self, start: int) -> int:
        """The work unit of the shard that starts at row `start` (what --part and ranks share out)."""
        return start // self.shard_size if self.units is None else bisect.bisect_right(self.units, start) - 1

    def shard_file(self, path: str, start: int, stop: int) -> Path:
        return self.root / path / f"{start:09d}-{stop:09d}.h5"

    def missing(self, path: str) -> list[Range]:
        """Shard ranges of a registered group that no finished shard file holds yet."""
        return [r for r in self.ranges(path) if not self.shard_file(path, *r).exists()]

    def complete(self, path: str) -> bool:
        return self.layout(path) is not None and not self.missing(path)

    def write_shard(self, path: str, start: int, stop: int, rows: np.ndarray, failures: dict[int, str]) -> None:
        """Atomically write rows [start, stop) of a described group; `failures` maps item row -> reason."""
        layout = self.layout(path)
        if layout is None:
            raise ValueError(f"/{path}: describe the group before writing its shards")
        if (start, stop) not in self.ranges(path):
            raise ValueError(f"/{path}: [{start}, {stop}) is not one of its shards")
        expected = (stop - start, *layout.row_shape)
        if rows.shape != expected:
            raise ValueError(f"shard {path}[{start}:{stop}] has shape {rows.shape}, expected {expected}")

        def fill(f: h5py.File) -> None:
            f.create_dataset("rows", data=rows.astype(layout.dtype))
            f.create_dataset("failed_row", data=np.array(sorted(failures), dtype=np.int64))
            write_strings(f, "failed_reason", [failures[r] for r in sorted(failures)])

        shard = self.shard_file(path, start, stop)
        needed = rows.size * np.dtype(layout.dtype).itemsize + sum(map(len, failures.values())) + SHARD_OVERHEAD
        hint = f"; the finished shards in {self.root} are kept: free space and re-run"
        ensure_folder(shard.parent)
        require_space(shard, needed, hint)  # before HDF5 meets a full disk (see expclip.cache.atomic)
        try:
            write_h5(shard, fill)
        except DiskFull as e:  # the disk filled while writing (another process?)
            raise DiskFull(shard, needed, e.free, hint) from e

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
