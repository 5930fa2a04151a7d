"""The one merge: the old cache's groups and a partial folder's shards become a new cache, atomically.

The new file is written beside the cache under a temporary name: old groups
copied, each new group's shards copied in row order (hashed as they go), then
/items, /failures and the completion marker last; only then is it renamed over
the cache. A finished cache is therefore never modified in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.atomic import write_atomically
from expclip.cache.h5files import set_attrs, write_failures, write_items
from expclip.cache.partial import PartialFolder
from expclip.cache.reader import open_cache, read_failures

CHUNK_BYTES = 1 << 20  # aligned groups are chunked by about this many bytes of float16 rows


def merge(cache: Path, items: fmt.Items, file_attrs: dict, partial: PartialFolder, groups: list[str]) -> dict[str, str]:
    """Write the cache with the named complete `groups` of `partial` added; returns item id -> failure reason."""
    failures: dict[str, str] = {}
    write_atomically(cache, lambda tmp: _merge_into(tmp, cache, items, file_attrs, partial, groups, failures))
    return failures


def _merge_into(tmp: Path, cache: Path, items: fmt.Items, file_attrs: dict, partial: PartialFolder,
                groups: list[str], failures: dict[str, str]) -> None:
    ok = np.ones(len(items), dtype=bool)
    with h5py.File(tmp, "w") as out:
        out.attrs["format"] = fmt.FORMAT
        out.attrs["format_version"] = fmt.FORMAT_VERSION
        out.attrs["kind"] = items.kind
        out.attrs["expclip_version"] = __version__
        set_attrs(out, file_attrs)
        if cache.exists():
            with open_cache(cache) as old:
                ok &= old["items/ok"][:]
                failures.update(read_failures(old))
                for root in fmt.ROOTS:
                    if root in old:
                        old.copy(old[root], out, name=root)
        for path in groups:
            _merge_group(out, partial, path, items, ok, failures)
        write_items(out, items, ok)
        write_failures(out, failures)
        out.flush()
        out.attrs["complete"] = True


def _merge_group(out: h5py.File, partial: PartialFolder, path: str, items: fmt.Items,
                 ok: np.ndarray, failures: dict[str, str]) -> None:
    """One dataset from a group's shards: item-aligned groups chunked, others (text) contiguous."""
    layout, ranges = partial.layout(path), partial.ranges(path)
    shape = (ranges[-1][1], *layout.row_shape)
    chunks = None
    if partial.spec(path)["rows"] is None:
        row_elements = max(1, int(np.prod(layout.row_shape)))
        chunks = (max(1, min(shape[0], CHUNK_BYTES // (row_elements * 2))), *layout.row_shape)
    ds = out.create_dataset(path, shape=shape, dtype=layout.dtype, chunks=chunks)

    def copied_shards() -> Iterator[np.ndarray]:
        """Each shard's rows, copied into the dataset as they are hashed (one shard in memory)."""
        for start, stop in ranges:
            with h5py.File(partial.shard_file(path, start, stop), "r") as shard:
                rows = shard["rows"][:]
                for r, reason in zip(shard["failed_row"][:], shard["failed_reason"][:], strict=True):
                    ok[int(r)] = False
                    failures.setdefault(items.ids[int(r)], reason.decode())
            ds[start:stop] = rows
            yield rows

    sha256 = fmt.digest(copied_shards())
    set_attrs(ds, layout.attrs)
    ds.attrs["sha256"] = sha256  # derived here, whatever the attributes said
