"""The one merge: the old cache's groups and a partial folder's shards become a new cache, atomically.

The new file is written beside the cache under a temporary name: old groups
copied, each new group's shards copied in row order (hashed as they go), then
/items, /failures, the checksums and the completion marker last; only
then is it renamed over the cache. A finished cache is therefore never modified
in place. Every numeric dataset written here is chunked with Fletcher-32
(docs/cache-format.md, *Checksums*); groups copied from the existing cache keep
their chunks and filter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.atomic import write_atomically
from expclip.cache.checksums import METADATA, STRINGS, STRINGS_SHA256, metadata_digest, ranges_digest, string_ranges
from expclip.cache.h5files import create_checked, row_chunks, set_attrs, write_failures, write_items
from expclip.cache.partial import PartialFolder
from expclip.cache.reader import open_cache, read_failures, read_items

# HDF5 1.10's file format (readable by HDF5 >= 1.10, 2016; every h5py wheel since 3.0): the superblock,
# object headers and chunk indexes carry checksums, so HDF5 refuses damaged metadata instead of misreading it.
LIBVER = ("v110", "v110")


def merge(cache: Path, items: fmt.Items, file_attrs: dict, partial: PartialFolder, groups: list[str]) -> dict[str, str]:
    """Write the cache with the named complete `groups` of `partial` added; returns item id -> failure reason."""
    failures: dict[str, str] = {}
    write_atomically(cache, lambda tmp: _merge_into(tmp, cache, items, file_attrs, partial, groups, failures))
    return failures


def _merge_into(tmp: Path, cache: Path, items: fmt.Items, file_attrs: dict, partial: PartialFolder,
                groups: list[str], failures: dict[str, str]) -> None:
    ok = np.ones(len(items), dtype=bool)
    with h5py.File(tmp, "w", libver=LIBVER) as out:
        out.attrs["format"] = fmt.FORMAT
        out.attrs["format_version"] = fmt.FORMAT_VERSION
        out.attrs["kind"] = items.kind
        out.attrs["expclip_version"] = __version__
        set_attrs(out, file_attrs)
        if cache.exists():
            with open_cache(cache) as old:  # checked: a damaged old cache is refused, not copied
                ok &= read_items(old).ok
                failures.update(read_failures(old))
                for root in fmt.ROOTS:
                    if root in old:
                        old.copy(old[root], out, name=root)
        for path in groups:
            _merge_group(out, partial, path, items, ok, failures)
        write_items(out, items, ok)
        write_failures(out, failures)
        out.attrs[METADATA] = metadata_digest(out)
        out.flush()  # every string is in place: list the bytes that hold them, then checksum those
        ranges = string_ranges(tmp, out)
        out.attrs[STRINGS] = ranges
        out.attrs[STRINGS_SHA256] = np.bytes_(ranges_digest(tmp, ranges))  # fixed-length: not itself in the heap
        out.flush()
        out.attrs["complete"] = True


def _merge_group(out: h5py.File, partial: PartialFolder, path: str, items: fmt.Items,
                 ok: np.ndarray, failures: dict[str, str]) -> None:
    """One dataset from a group's shards, chunked by rows with Fletcher-32 (item-aligned groups as before:
    about CHUNK_BYTES of float16 rows a chunk, whatever their dtype)."""
    layout, ranges = partial.layout(path), partial.ranges(path)
    shape = (ranges[-1][1], *layout.row_shape)
    chunks = row_chunks(shape, 2 if partial.spec(path)["rows"] is None else np.dtype(layout.dtype).itemsize)
    ds = create_checked(out, path, shape, layout.dtype, chunks)

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
