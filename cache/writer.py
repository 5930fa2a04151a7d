"""Resumable, crash-safe cache writing by one or several writers: register, describe, shards, one merge.

Every group (`image/<key>`, `teacher/<key>/<instr>`, `text/<key>/<set>`) goes
through the same protocol:

1. `register(path, config, rows)` checks the configuration against the cache and
   the partial folder and returns the shard ranges still to encode (none when
   the cache has the group or every shard is written);
2. `describe(path, attrs, row_shape, dtype)` records what is known once its
   encoder is loaded;
3. `write_shard(...)` writes one shard atomically;
4. `finalize()` merges old cache and shards into a new cache (expclip.cache.merge).

Writers of disjoint shards of one partial folder need no coordination (every
file there is written once, or identically by anyone); one process merges. A
SIGKILL at any moment loses at most the shards in flight.
"""

from __future__ import annotations

import glob
from pathlib import Path

import h5py
import numpy as np

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.atomic import DiskFull, followed, remove_dead_temporaries, require_space
from expclip.cache.compare import check_same
from expclip.cache.lock import CacheLock
from expclip.cache.merge import merge
from expclip.cache.partial import Layout, PartialFolder, Range
from expclip.cache.reader import attr_value, open_cache, read_items

__all__ = ["Extraction", "Range", "write_arrays"]

MERGE_MARGIN = 256 << 10  # bytes, plus 1 %, beyond old cache + shard files that a merge may need (HDF5 metadata)


class Extraction:
    """One cache being extended: which shards are missing, shard writes, the final merge."""

    def __init__(self, cache: Path, items: fmt.Items, file_attrs: dict, *, shard_size: int = 1024,
                 sole_writer: bool = False, units: list[int] | None = None):
        """`sole_writer`: the caller holds the cache's exclusive lock (expclip.cache.lock), so every
        temporary file there is a dead run's; otherwise only those of dead processes on this host are.
        `units`: the first row of each work unit that no shard crosses (cache.partial.PartialFolder)."""
        self.cache, self.items, self.file_attrs = Path(cache), items, file_attrs
        root, real = fmt.partial_dir(self.cache), followed(self.cache)  # a link's temporaries lie beside its target
        remove_dead_temporaries(real.parent, glob.escape(real.name), any_host=sole_writer)
        remove_dead_temporaries(root, recursive=True, any_host=sole_writer)
        self.existing = self._existing_groups()
        self.partial = PartialFolder(root, items, shard_size, units)

    def _existing_groups(self) -> dict[str, dict]:
        """Group path -> attributes of every feature group the cache already holds."""
        if not self.cache.exists():
            return {}
        found: dict[str, dict] = {}
        with open_cache(self.cache) as f:
            old = read_items(f)
            if not old.same_rows(self.items):
                raise ExpclipError(
                    f"{self.cache}: holds {len(old)} items that differ from this source's {len(self.items)} "
                    "(ids, labels, classes or frames); write to a new --out file"
                )

            def note(name: str, obj: h5py.HLObject) -> None:
                if isinstance(obj, h5py.Dataset) and name.split("/")[0] in fmt.ROOTS:
                    found[name] = {k: attr_value(v) for k, v in obj.attrs.items()}

            f.visititems(note)
        return found

    @property
    def shard_size(self) -> int:
        return self.partial.shard_size

    def unit(self, start: int) -> int:
        """The work unit of the shard starting at row `start`: --part and ranks share out whole units."""
        return self.partial.unit(start)

    def register(self, path: str, config: dict, rows: int | None = None) -> list[Range]:
        """Declare a group and the configuration that makes it; returns the shard ranges still to write.

        `rows=None`: one row per item, in shards of `shard_size`; an int: that
        many rows of their own (text features), one shard. A different
        configuration under the same path, in the cache or the partial folder,
        is refused (only the keys the existing group records are compared).
        """
        if path in self.existing:
            check_same(str(self.cache), path, self.existing[path], config)
            return []
        spec = self.partial.register(path, config, rows)
        check_same(str(self.partial.root), path, spec["config"], config)
        if spec["rows"] != rows:
            raise ExpclipError(
                f"{self.partial.root}: /{path} was begun with {spec['rows']} rows, this run makes {rows}; "
                "delete the folder or use the same options"
            )
        return self.partial.missing(path)

    def describe(self, path: str, attrs: dict, row_shape: tuple[int, ...], dtype: str = "float16") -> None:
        """Record what is known once the encoder is loaded: attributes, row shape, dtype (once per group)."""
        config = self.partial.spec(path)["config"]
        asked = Layout({**{k: v for k, v in attrs.items() if k != "sha256"}, **config}, tuple(row_shape), dtype)
        had = self.partial.describe(path, asked)
        if (had.row_shape, had.dtype) != (asked.row_shape, asked.dtype):
            raise ExpclipError(
                f"{self.partial.root}: /{path} was started with rows {list(had.row_shape)} {had.dtype}, "
                f"this run makes {list(asked.row_shape)} {dtype}; delete the folder or use the same options"
            )

    def missing(self, path: str) -> list[Range]:
        """Shard ranges of a registered group that no finished shard file holds yet."""
        return [] if path in self.existing else self.partial.missing(path)

    def write_shard(self, path: str, start: int, stop: int, rows: np.ndarray,
                    failures: dict[int, str] | None = None) -> None:
        """Atomically write rows [start, stop) of a described group; `failures` maps item row -> reason."""
        self.partial.write_shard(path, start, stop, rows, failures or {})

    def _new_groups(self) -> list[str]:
        return [p for p in self.partial.groups() if p not in self.existing]

    def unfinished(self) -> list[str]:
        """Groups of the partial folder that still miss shards (or were never described)."""
        return [p for p in self._new_groups() if not self.partial.complete(p)]

    def _merged_bytes(self) -> int:
        """The old cache and the new groups' shard files written so far (all of them when merging)."""
        if self.cache.exists():
            size = self.cache.stat().st_size
        else:  # /items: ids in a heap (length + about 64 bytes each), labels, ok, frame indices
            size = sum(len(i.encode()) + 64 for i in self.items.ids)
            size += 0 if self.items.frame_index is None else np.asarray(self.items.frame_index).nbytes * 2
        for path in self._new_groups():
            files = [self.partial.shard_file(path, *r) for r in self.partial.ranges(path)]
            size += sum(f.stat().st_size for f in files if f.exists())
        return size

    def merged_size(self) -> int:
        """Bytes the merged file needs at most: the old cache, every new group's shard files, a margin.

        The merged file holds the shards' rows without the HDF5 overhead each
        shard file carries, so their sum nearly bounds it; 1 % and the margin
        cover HDF5's own metadata.
        """
        size = self._merged_bytes()
        return size + size // 100 + MERGE_MARGIN

    def require_space(self, new_bytes: int, merging: bool, hint: str = "") -> None:
        """Refuse to start when the disk clearly cannot hold `new_bytes` of shards (and, when `merging`,
        the merged cache beside the old one as well), before hours of encoding end in a full disk.

        Only the feature bytes count here (no margins): each shard and the merge
        check their own size again before they are written.
        """
        needed = new_bytes + (self._merged_bytes() + new_bytes if merging else 0)
        require_space(self.partial.root, needed, hint)

    def finalize(self) -> dict[str, str]:
        """Merge the old cache and every shard into a new cache, then remove the partial folder; returns failures.

        The merged file is written beside the cache before the old one is
        replaced, so the filesystem must hold both for a moment: a merge that
        cannot fit is refused before it starts, with the numbers, and the
        shards stay for a re-run.
        """
        if self.unfinished():
            raise RuntimeError(f"finalize() before every shard is written: {self.unfinished()}")
        needed = self.merged_size()
        moved = f"{self.cache.name} and {self.partial.root.name}" if self.cache.exists() else self.partial.root.name
        hint = (f"; the finished shards in {self.partial.root} are kept: free space (or move {moved} "
                "to a bigger disk) and re-run to merge them")
        require_space(followed(self.cache), needed, hint)
        try:
            failures = merge(self.cache, self.items, self.file_attrs, self.partial, self._new_groups())
        except DiskFull as e:  # the disk filled while merging (another process?); the old cache is untouched
            raise DiskFull(self.cache, needed, e.free, hint) from e
        self.partial.remove()
        return failures


def write_arrays(
    cache: Path,
    items: fmt.Items,
    *,
    file_attrs: dict,
    aligned: dict[str, tuple[np.ndarray, dict]],
    small: dict[str, tuple[np.ndarray, dict]] | None = None,
    dtype: str = "float16",
    failures: dict[int, str] | None = None,
) -> dict[str, str]:
    """Write (or extend) a cache from arrays already in memory, through the same protocol as extract.

    For synthetic caches (tests, benchmarks, the demo) and for users converting
    features computed elsewhere; `aligned` and `small` map group path ->
    (rows, attrs); `small` groups (text) keep their rows' dtype. `failures`
    marks item rows as not decoded (item row -> reason), as extract does.
    """
    with CacheLock(Path(cache)):
        job = Extraction(Path(cache), items, file_attrs, shard_size=max(1, len(items)), sole_writer=True)
        return _write(job, aligned, small or {}, dtype, failures or {})


def _write(job: Extraction, aligned: dict[str, tuple[np.ndarray, dict]], small: dict[str, tuple[np.ndarray, dict]],
           dtype: str, failures: dict[int, str]) -> dict[str, str]:
    groups = [(path, rows, attrs, None, dtype) for path, (rows, attrs) in aligned.items()]
    groups += [(path, rows, attrs, len(rows), str(rows.dtype)) for path, (rows, attrs) in small.items()]
    for path, rows, attrs, count, store in groups:
        config = {k: v for k, v in attrs.items() if k != "sha256"}
        todo = job.register(path, config, count)
        if todo:
            job.describe(path, config, tuple(rows.shape[1:]), store)
        for start, stop in todo:
            failed = {} if count is not None else {i: r for i, r in failures.items() if start <= i < stop}
            job.write_shard(path, start, stop, rows[start:stop], failed)
    return job.finalize()
