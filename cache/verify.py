"""`expclip cache verify`: every checksum of a cache, recomputed from the stored bytes.

For each feature group the sha256 of its bytes is recomputed, a block of whole
chunks at a time (never the whole dataset in memory) and compared with its
`sha256` attribute; HDF5 checks each chunk's Fletcher-32 on the way (new
caches). /items and /failures are checked against their `sha256`, the file's
structure and attributes against `metadata_sha256`, its strings (global heap)
against `string_bytes_sha256` before anything else. A checksum that is
missing is a problem like one that does not match: every cache of this format
version carries all of them (an older version is refused on open).

A file that cannot be opened as a cache raises ExpclipError (the CLI exits 2);
a damaged part is a problem line (exit 1). Damaged strings stop the check: HDF5
could loop forever parsing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from expclip.cache import format as fmt
from expclip.cache.checksums import (
    H5_ERRORS,
    METADATA,
    SHA256,
    DamagedCache,
    attr_text,
    dataset_blocks,
    metadata_digest,
    one_line,
    values_digest,
)
from expclip.cache.reader import feature_datasets, open_cache


@dataclass
class Verified:
    """What `verify_cache` found in one file."""

    path: Path
    problems: list[str] = field(default_factory=list)  # one line each, naming the file and the dataset
    groups: int = 0
    nbytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return (f"{self.path}: {len(self.problems)} damaged; delete it and re-run `expclip extract SOURCE "
                    f"--out {self.path}` with the options that wrote it")
        return (f"{self.path}: OK, {self.groups} feature groups, items and metadata, "
                f"{self.nbytes / 1e6:,.1f} MB in {self.seconds:.1f} s")


def _problem(found: Verified, what: str, why: str) -> None:
    found.problems.append(f"{found.path}: {what}: {why}")


def _unless_unreadable(found: Verified, what: str, check: Callable[..., None], *args: object) -> None:
    """Run one check; a part HDF5 cannot read is a problem of that part, and the others are still checked."""
    try:
        check(*args)
    except H5_ERRORS as e:
        _problem(found, what, f"unreadable ({one_line(e)})")


def _bad_chunks(ds: h5py.Dataset, start: int, stop: int) -> list[tuple[int, int]]:
    """Row ranges of the chunks in [start, stop) that cannot be read."""
    chunk = ds.chunks[0] if ds.chunks else stop - start
    bad = []
    for a in range(start, stop, max(1, chunk)):
        b = min(a + chunk, stop)
        try:
            ds[a:b]
        except H5_ERRORS:
            bad.append((a, b))
    return bad


def _check_dataset(found: Verified, name: str, ds: h5py.Dataset) -> None:
    expected = attr_text(ds, SHA256)
    bad: list[tuple[int, int]] = []
    digest = fmt.digest(dataset_blocks(ds, lambda a, b: bad.extend(_bad_chunks(ds, a, b) or [(a, b)])))
    found.nbytes += ds.size * ds.dtype.itemsize
    if bad:
        rows = ", ".join(f"{a}–{b - 1}" for a, b in bad[:5]) + (", …" if len(bad) > 5 else "")
        check = "fail their Fletcher-32 checksum" if ds.fletcher32 else "cannot be read"
        _problem(found, f"/{name}", f"{len(bad)} chunk(s) {check} (rows {rows})")
    elif expected is None:
        _problem(found, f"/{name}", "has no sha256 attribute")
    elif digest != expected:
        _problem(found, f"/{name}", "its bytes do not match its sha256 attribute")


def _check_values(found: Verified, f: h5py.File, name: str) -> None:
    if name not in f:
        if name == "items":
            _problem(found, "/items", "missing")
        return
    g = f[name]
    expected = attr_text(g, SHA256)
    if expected is None:
        _problem(found, f"/{name}", "has no sha256 attribute")
    elif values_digest(g) != expected:
        _problem(found, f"/{name}", "its values do not match its sha256 attribute")


def verify_cache(path: Path) -> Verified:
    """Check every checksum of a cache; ExpclipError when it cannot be opened as a cache at all."""
    path = Path(path)
    found, start = Verified(path), time.perf_counter()
    try:
        f = open_cache(path, check=False)  # the global heap is checked first, always
    except DamagedCache as e:
        found.problems.append(e.line)
        return found
    with f:
        try:
            expected = attr_text(f, METADATA)
            if expected is None:
                _problem(found, "structure or attributes", f"no {METADATA} attribute")
            elif metadata_digest(f) != expected:
                _problem(found, "structure or attributes", f"do not match {METADATA}")
        except H5_ERRORS as e:
            _problem(found, "structure or attributes", f"unreadable ({one_line(e)})")
        for name in ("items", "failures"):
            _unless_unreadable(found, f"/{name}", _check_values, found, f, name)
        try:
            datasets = feature_datasets(f)
        except H5_ERRORS as e:
            _problem(found, "/" + ", /".join(fmt.ROOTS), f"cannot be listed ({one_line(e)})")
            datasets = {}
        for name, ds in datasets.items():
            _unless_unreadable(found, f"/{name}", _check_dataset, found, name, ds)
        found.groups = len(datasets)
    found.seconds = time.perf_counter() - start
    return found
