"""The cache's checksums (docs/cache-format.md, *Checksums*): what they cover and how each is computed.

- Every numeric dataset of a cache has the Fletcher-32 filter: HDF5 checks
  each chunk on every read, whoever reads it.
- `/items` and `/failures` (variable-length strings, which no HDF5 filter
  covers) carry `sha256` over their datasets' values (`values_digest`).
- The file carries `metadata_sha256` over its structure and every attribute
  (`metadata_digest`): group and dataset names, shapes, dtypes, attribute values.
- Variable-length strings live in HDF5's global heap, which has no checksum
  of its own, and damage there (or in a string dataset's references into it)
  can make HDF5 loop forever or allocate gigabytes. The file lists those byte
  ranges (`string_bytes`: offset and size of each global heap collection and of
  each string dataset's stored references) with the sha256 of their bytes
  (`string_bytes_sha256`), both plain attributes (not themselves in the heap),
  so a reader checks them with ordinary file reads before HDF5 parses any string.
- Feature groups keep their `sha256` of the dataset's bytes (fingerprints,
  `expclip cache verify`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import BinaryIO, Callable, Iterator

import h5py
import numpy as np

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt

SHA256 = "sha256"
METADATA = "metadata_sha256"
STRINGS, STRINGS_SHA256 = "string_bytes", "string_bytes_sha256"
# Set after the metadata digest (which cannot cover itself): the string ranges, their checksum, the completion marker.
UNCHECKED_ROOT_ATTRS = ("complete", METADATA, STRINGS, STRINGS_SHA256)
GCOL = b"GCOL\x01\x00\x00\x00"  # a global heap collection: signature, version 1, three reserved bytes
BLOCK_BYTES = 1 << 24  # what a checksum over a large dataset or file reads at a time
# What h5py raises on damaged files (a KeyError too, for a name it can no longer find).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError, IndexError, OverflowError)


def one_line(error: BaseException) -> str:
    """h5py's message on one line; a failed Fletcher-32 check said as such."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "filter returned failure during read" in text:  # the only filter expclip writes
        return "a chunk fails its Fletcher-32 checksum"
    return text


class DamagedCache(ExpclipError):
    """A cache that opens but whose bytes no longer match a checksum, or that HDF5 cannot parse."""

    def __init__(self, path, what: str, reason: str):
        self.path, self.what, self.reason = path, what, reason
        super().__init__(
            f"{path}: {what} is damaged ({reason}); delete {path} and re-run `expclip extract SOURCE --out {path}` "
            "with the options that wrote it"
        )

    @property
    def line(self) -> str:
        """The problem alone, for `expclip cache verify`."""
        return f"{self.path}: {self.what}: {self.reason}"


class OlderCache(ExpclipError):
    """An expclip cache of an older format version: this expclip does not read it; extracting again does."""

    def __init__(self, path, version: object, message: str):
        self.path, self.version = path, version
        super().__init__(message)


class NotACache(ExpclipError):
    """A readable HDF5 file that carries none of the attributes expclip writes: someone else's file.

    Never called damaged, never read, extended or replaced: advice to delete
    it would destroy a user's data.
    """

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: not an expclip cache ({reason}); expclip leaves it untouched: "
                         "give an expclip cache, or another file name to create one")


def damaged(path, what: str, why: BaseException | str) -> DamagedCache:
    """The one error for a damaged cache: which file, which part, why, and what to do."""
    return DamagedCache(path, what, why if isinstance(why, str) else one_line(why))


def values_digest(group: h5py.Group) -> str:
    """sha256 of a group's datasets in name order: name, then values (strings as UTF-8, length-prefixed;
    numbers as their stored little-endian bytes with dtype and shape)."""
    h = hashlib.sha256()
    for name in sorted(group):
        ds = group[name]
        h.update(name.encode() + b"\0")
        data = ds[()]
        if ds.dtype.kind == "O":
            for value in np.asarray(data, dtype=object).ravel():
                raw = value if isinstance(value, bytes) else str(value).encode()
                h.update(len(raw).to_bytes(8, "little") + raw)
        else:
            data = np.ascontiguousarray(data)
            h.update(f"{data.dtype.str}{list(data.shape)}".encode() + data.tobytes())
    return h.hexdigest()


def _plain(value):
    """An attribute value as JSON, exactly (numbers by their bytes, strings as text, bytes as hex)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return ["array", list(value.shape), [_plain(v) for v in value.ravel().tolist()]]
        return ["array", value.dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes().hex()]
    if isinstance(value, np.generic):
        return ["scalar", value.dtype.str, value.tobytes().hex()]
    return repr(value)


def _attrs(obj: h5py.HLObject, skip: tuple[str, ...] = ()) -> list:
    return sorted([name, _plain(obj.attrs[name])] for name in obj.attrs if name not in skip)


def metadata_digest(f: h5py.File) -> str:
    """sha256 of the file's structure and attributes (all but `complete` and this digest itself)."""
    found: list = [["/", "group", _attrs(f, UNCHECKED_ROOT_ATTRS)]]

    def note(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append([name, "dataset", list(obj.shape), obj.dtype.str, _attrs(obj)])
        else:
            found.append([name, "group", _attrs(obj)])

    f.visititems(note)
    text = json.dumps(sorted(found, key=lambda entry: entry[0]), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def row_blocks(ds: h5py.Dataset) -> list[tuple[int, int]]:
    """Row ranges of whole chunks, about BLOCK_BYTES each: a chunk is never read twice or split."""
    n = ds.shape[0]
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:])))
    chunk = max(1, ds.chunks[0] if ds.chunks else 1)
    step = chunk * max(1, BLOCK_BYTES // (row_bytes * chunk))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def dataset_blocks(ds: h5py.Dataset, unreadable: Callable[[int, int], None] | None = None) -> Iterator[np.ndarray]:
    """A dataset's values as stored, a block of whole chunks at a time. A block HDF5 cannot read raises, or
    with `unreadable` is passed to it as its row range and left out (verify goes on to list every one)."""
    if not ds.shape:
        yield np.ascontiguousarray(ds[()])
        return
    for a, b in row_blocks(ds):
        try:
            block = ds[a:b]
        except H5_ERRORS:
            if unreadable is None:
                raise
            unreadable(a, b)
            continue
        yield block


def stored_digest(ds: h5py.Dataset) -> str:
    """sha256 of a dataset's bytes as stored (its `sha256` attribute), read a block of chunks at a time."""
    return fmt.digest(dataset_blocks(ds))


def file_blocks(f: BinaryIO) -> Iterator[bytes]:
    """What is left to read in an open file, BLOCK_BYTES at a time: a file larger than memory is never read
    whole."""
    while block := f.read(BLOCK_BYTES):
        yield block


def attr_text(obj: h5py.HLObject, name: str) -> str | None:
    value = obj.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def string_ranges(path, f: h5py.File) -> np.ndarray:
    """(k, 2) int64: offset and size of the bytes that hold variable-length strings, in file order.

    Every global heap collection (found by its signature; one is at least its
    16-byte header long and lies within the file; a match inside feature data
    would only add bytes to the checksum) and every string dataset's stored
    heap references (contiguous storage).
    """
    found = []
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        tail, base = b"", 0  # base: the file offset of data[0]; a header cut by a block's end is seen in the next
        for block in file_blocks(raw):
            data = tail + block
            i = data.find(GCOL)
            while 0 <= i <= len(data) - 16:
                length = int.from_bytes(data[i + 8:i + 16], "little")
                if 16 <= length <= size - (base + i):
                    found.append((base + i, length))
                i = data.find(GCOL, i + 1)
            tail = data[-15:]
            base += len(data) - len(tail)

    def note(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "O" and obj.id.get_offset() is not None:
            found.append((obj.id.get_offset(), obj.id.get_storage_size()))

    f.visititems(note)
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def ranges_digest(path, ranges: np.ndarray) -> str:
    """sha256 of the bytes of the listed (offset, size) ranges, in order; "" when one lies beyond the file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for address, length in np.asarray(ranges, dtype=np.int64).reshape(-1, 2).tolist():
            f.seek(address)
            data = f.read(length)
            if len(data) != length:
                return ""
            h.update(data)
    return h.hexdigest()
