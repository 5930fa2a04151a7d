"""Typed, read-only views of a finished cache (format in docs/cache-format.md).

Every open checks what is small: first the bytes that hold strings against
`string_bytes_sha256` (with plain file reads, before HDF5 parses a string),
then the file's structure and attributes against `metadata_sha256`, /items and
/failures against their `sha256`, each text group against its `sha256`. The large groups (image, teacher) are checked
by HDF5 itself, chunk by chunk, as they are read (Fletcher-32), and whole by
`expclip cache verify`. Whatever damage a read meets becomes one ExpclipError
naming the file, the dataset and what to do. Only files of this format version
are read: every one of them carries these checksums, so none is read unchecked.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.checksums import (
    H5_ERRORS,
    METADATA,
    SHA256,
    STRINGS,
    STRINGS_SHA256,
    NotACache,
    OlderCache,
    attr_text,
    damaged,
    metadata_digest,
    ranges_digest,
    stored_digest,
    values_digest,
)


def attr_value(value):
    """An HDF5 attribute as plain Python: str, int, float, bool, or a list of those."""
    if isinstance(value, bytes):
        return value.decode(fmt.STR_DTYPE)
    if isinstance(value, np.ndarray):
        return [attr_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


@contextmanager
def guarded(path, what: str) -> Iterator[None]:
    """h5py's errors on a damaged file as one ExpclipError naming `what` (a dataset, a group)."""
    try:
        yield
    except ExpclipError:
        raise
    except H5_ERRORS as e:
        raise damaged(path, what, e) from None


def _open(path: Path, check: bool = False) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise ExpclipError(f"{path}: no such cache file")
    try:
        f = h5py.File(path, "r")
    except H5_ERRORS as e:
        raise ExpclipError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        with guarded(path, "the file's metadata"):
            check_strings(f, path)  # before HDF5 parses any string
            check_marker(f, path)
            check_version(f, path)
            if not bool(f.attrs.get("complete", False)):
                raise ExpclipError(f"{path}: incomplete cache (no completion marker); re-run `expclip extract`")
            if STRINGS not in f.attrs:
                raise damaged(path, "the file's string storage (HDF5 global heap)", f"it has no {STRINGS} attribute")
        if check:
            check_small(f, path)
    except BaseException:
        f.close()
        raise
    return f


EXPCLIP_ATTRS = ("format_version", "complete", METADATA, STRINGS)  # besides `format`, which other files may use


def check_marker(f: h5py.File, path: Path) -> None:
    """Refuse a file without the `format` marker: NotACache when expclip wrote none of its attributes
    (someone else's HDF5 file), DamagedCache when it did (the marker itself was damaged)."""
    found = attr_value(f.attrs.get("format"))
    if found == fmt.FORMAT:
        return
    marker = (
        f"no format attribute {fmt.FORMAT!r}" if found is None else f"format attribute {found!r}, not {fmt.FORMAT!r}"
    )
    if not any(name in f.attrs for name in EXPCLIP_ATTRS):
        raise NotACache(path, f"{marker}, no format_version")
    raise damaged(path, "the file's format marker", marker)


def check_version(f: h5py.File, path: Path) -> None:
    """Refuse a cache of another format version: a newer one needs a newer expclip, an older one
    (expclip 0.1.0's, some of them without checksums) is extracted again."""
    version = attr_value(f.attrs.get("format_version"))
    if version == fmt.FORMAT_VERSION:
        return
    if version is None:
        raise damaged(path, "the file's format marker", "no format_version attribute")
    if isinstance(version, int) and version > fmt.FORMAT_VERSION:
        raise ExpclipError(f"{path}: format_version {version} is newer than this expclip reads ({fmt.FORMAT_VERSION})")
    raise OlderCache(
        path, version, f"{path}: format_version {version} is older than this expclip reads ({fmt.FORMAT_VERSION}); "
        f"re-extract it: delete {path} and re-run `expclip extract SOURCE --out {path}`"
    )


def check_strings(f: h5py.File, path: Path) -> None:
    """Check the bytes that hold strings against `string_bytes_sha256`, before HDF5 parses a string.

    A file without `string_bytes` is someone else's or of another version: `check_marker` and
    `check_version` say which, and a cache of this version without it is damaged (`_open`).
    """
    if STRINGS not in f.attrs:
        return
    ranges, expected = f.attrs[STRINGS], f.attrs.get(STRINGS_SHA256)
    if not isinstance(expected, bytes) or ranges_digest(path, ranges) != expected.decode("ascii", "replace"):
        raise damaged(path, "the file's string storage (HDF5 global heap)", f"its bytes do not match {STRINGS_SHA256}")


def open_cache(path: Path, *, check: bool = True) -> h5py.File:
    """Open a cache read-only, refusing files that are not complete expclip caches, or damaged (`check`;
    without it only the global heap is checked, as HDF5 could loop forever on a damaged one).

    DamagedCache (an ExpclipError) names the part that does not match its checksum.
    """
    return _open(path, check)


def feature_datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    """Path -> dataset of every feature group (under /image, /teacher, /text), sorted by path."""
    found: dict[str, h5py.Dataset] = {}

    def note(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    for root in fmt.ROOTS:
        if root in f:
            f[root].visititems(lambda name, obj, root=root: note(f"{root}/{name}", obj))
    return dict(sorted(found.items()))


def check_small(f: h5py.File, path: Path) -> fmt.Items:
    """Check structure, attributes, /items, /failures and text groups against their checksums; returns the items."""
    what = "the file's metadata (structure or attributes)"
    with guarded(path, what):
        expected = attr_text(f, METADATA)
        if expected is None:
            raise damaged(path, what, f"it has no {METADATA} attribute")
        if metadata_digest(f) != expected:
            raise damaged(path, what, f"it does not match {METADATA}")
        datasets = feature_datasets(f)
    items = read_items(f)
    read_failures(f)
    for name, ds in datasets.items():
        if name.startswith("text/"):
            with guarded(path, f"/{name}"):
                if attr_text(ds, SHA256) != stored_digest(ds):
                    raise damaged(path, f"/{name}", "its bytes do not match its sha256 attribute")
    return items


def _checked_group(f: h5py.File, name: str) -> h5py.Group:
    """/items or /failures, its values checked against its `sha256`."""
    g = f[name]
    if values_digest(g) != attr_text(g, SHA256):
        raise damaged(f.filename, f"/{name}", "its values do not match its sha256 attribute")
    return g


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode(fmt.STR_DTYPE) if isinstance(s, bytes) else str(s) for s in ds[:]]


def read_items(f: h5py.File) -> fmt.Items:
    with guarded(f.filename, "/items"):
        g = _checked_group(f, "items")
        clips = "frame_index" in g
        return fmt.Items(
            ids=_strings(g["id"]),
            labels=g["label"][:].astype(np.int64),
            class_names=_strings(g["class_names"]),
            frame_index=g["frame_index"][:] if clips else None,
            num_frames=g["num_frames"][:] if clips else None,
            ok=g["ok"][:].astype(bool),
        )


def read_failures(f: h5py.File) -> dict[str, str]:
    """Item id -> why it could not be decoded."""
    with guarded(f.filename, "/failures"):
        if "failures" not in f:
            return {}
        g = _checked_group(f, "failures")
        return dict(zip(_strings(g["id"]), _strings(g["reason"]), strict=True))


@dataclass(frozen=True)
class TextFeatures:
    """One prompt set: raw CLIP text features and the canonical class of each prompt."""

    features: np.ndarray  # (K, D) float32
    prompts: list[str]
    class_names: list[str]  # the protocol's canonical names
    class_index: np.ndarray  # (K,) into class_names


class CacheReader:
    """Read a cache by role (image / teacher / text) without knowing HDF5 paths; checked on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = _open(self.path)
        try:
            self._items = check_small(self._f, self.path)
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def _guard(self, what: str):
        return guarded(self.path, what)

    def _attrs(self, obj: h5py.HLObject, what: str) -> dict:
        """Attributes as plain Python (checked on open against `metadata_sha256`)."""
        with self._guard(what):
            return {k: attr_value(v) for k, v in obj.attrs.items()}

    @property
    def attrs(self) -> dict:
        return self._attrs(self._f, "the file's metadata")

    @property
    def dataset(self) -> str:
        return str(self.attrs.get("dataset", self.path.stem))

    @property
    def kind(self) -> str:
        return str(self.attrs["kind"])

    def items(self) -> fmt.Items:
        """The items as checked on open (a copy: callers may change it)."""
        i = self._items
        return replace(
            i,
            ids=list(i.ids),
            labels=i.labels.copy(),
            class_names=list(i.class_names),
            ok=i.ok.copy(),
            frame_index=None if i.frame_index is None else i.frame_index.copy(),
            num_frames=None if i.num_frames is None else i.num_frames.copy(),
        )

    def failures(self) -> dict[str, str]:
        return read_failures(self._f)

    def _keys(self, root: str) -> list[str]:
        with self._guard(f"/{root}"):
            return sorted(self._f[root].keys()) if root in self._f else []

    def image_keys(self) -> list[str]:
        return self._keys("image")

    def teacher_keys(self) -> list[tuple[str, str]]:
        return [(t, i) for t in self._keys("teacher") for i in self._keys(f"teacher/{t}")]

    def text_sets(self, key: str) -> list[str]:
        return self._keys(f"text/{key}")

    def _dataset(self, path: str) -> h5py.Dataset:
        with self._guard(f"/{path}"):
            if path not in self._f:
                raise ExpclipError(f"{self.path}: has no /{path}")
            ds = self._f[path]
            if not isinstance(ds, h5py.Dataset):
                raise damaged(self.path, f"/{path}", "a group where a dataset belongs")
            return ds

    def _read(self, path: str) -> np.ndarray:
        """A whole dataset; a chunk failing its Fletcher-32 checksum names the dataset."""
        ds = self._dataset(path)
        with self._guard(f"/{path}"):
            return ds[()]

    def rows(self, path: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a group as stored: one contiguous slice (HDF5 serves scattered rows one
        small selection at a time, re-reading their chunks; callers that shuffle read blocks and shuffle in memory)."""
        ds = self._dataset(path)
        with self._guard(f"/{path}"):
            return ds[start:stop]

    def rows_into(self, path: str, start: int, stop: int, out: np.ndarray) -> None:
        """Rows [start, stop) read straight into `out` (converted to its dtype by HDF5; no copy in between)."""
        ds = self._dataset(path)
        with self._guard(f"/{path}"):
            ds.read_direct(out, source_sel=np.s_[start:stop])

    def chunk_rows(self, path: str) -> int:
        """Rows per chunk of a group (its whole length when not chunked)."""
        ds = self._dataset(path)
        with self._guard(f"/{path}"):
            return ds.chunks[0] if ds.chunks else max(1, ds.shape[0])

    def group_shape(self, path: str) -> tuple[tuple[int, ...], str]:
        ds = self._dataset(path)
        with self._guard(f"/{path}"):
            return ds.shape, str(ds.dtype)

    def group_attrs(self, path: str) -> dict:
        found = self._attrs(self._dataset(path), f"/{path}")
        if path.startswith("text/") and not {"prompts", "class_names", "class_index"} <= found.keys():
            raise damaged(self.path, f"/{path}", "it lacks its prompts, class_names or class_index attribute")
        return found

    def image(self, key: str) -> np.ndarray:
        """(N, D) or (N, T, D) raw CLIP image features as stored (float16 by default)."""
        return self._read(fmt.image_path(key))

    def image_attrs(self, key: str) -> dict:
        return self.group_attrs(fmt.image_path(key))

    def teacher(self, teacher_key: str, instruction_key: str) -> np.ndarray:
        """(N, Dt) pooled teacher features as stored."""
        return self._read(fmt.teacher_path(teacher_key, instruction_key))

    def teacher_attrs(self, teacher_key: str, instruction_key: str) -> dict:
        return self.group_attrs(fmt.teacher_path(teacher_key, instruction_key))

    def text(self, key: str, prompt_set: str) -> TextFeatures:
        path = fmt.text_path(key, prompt_set)
        features, a = self._read(path), self.group_attrs(path)
        with self._guard(f"/{path}"):
            return TextFeatures(
                features=features.astype(np.float32),
                prompts=list(a["prompts"]),
                class_names=list(a["class_names"]),
                class_index=np.asarray(a["class_index"], dtype=np.int64),
            )

    def group_paths(self) -> list[str]:
        """Every feature group: /image/<key>, /teacher/<key>/<instruction>, /text/<key>/<set>."""
        paths = [fmt.image_path(k) for k in self.image_keys()]
        paths += [fmt.teacher_path(t, i) for t, i in self.teacher_keys()]
        return paths + [fmt.text_path(k, s) for k in self.image_keys() for s in self.text_sets(k)]

    def fingerprint(self, paths: list[str]) -> str:
        """Content fingerprint of the named groups plus the item set's identity: changes whenever either does."""
        sums = []
        for p in sorted(paths):
            with self._guard(f"/{p}"):
                sums.append(str(self.group_attrs(p)["sha256"]))
        text = "\n".join([*sums, self._items.identity()])
        return fmt.digest([np.frombuffer(text.encode(), dtype=np.uint8)])


def whole_fingerprint(path: Path) -> str:
    """The fingerprint of everything a cache holds (items and every feature group): how ablation keys its runs
    and `run` records the caches it made."""
    with CacheReader(path) as reader:
        return reader.fingerprint(reader.group_paths())
