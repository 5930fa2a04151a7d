"""Resumable, crash-safe cache writing: atomic shard files, then one atomic merge.

A finished cache is never modified in place. Rows are encoded into shard files
in `CACHE.h5.partial/` (each written under a temporary name and renamed, so an
existing shard is complete); when every shard is there, `finalize` writes a new
file beside the cache, sets the completion marker last and renames it over the
cache. A SIGKILL at any moment therefore loses at most the shards in flight.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.atomic import write_atomically
from expclip.cache.reader import attr_value, open_cache, read_failures, read_items
from expclip.base.errors import ExpclipError

MANIFEST = "manifest.json"


def _config_view(attrs, keys) -> dict[str, str]:
    """The `keys` of attributes (HDF5 or a dict) as strings: how configurations are compared."""
    return {k: str(attr_value(attrs.get(k))) for k in keys}


def _describe(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))


def _write_h5(target: Path, fill: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file whole or not at all (see expclip.cache.atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            fill(f)

    write_atomically(target, write)


def write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype(fmt.STR_DTYPE))


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


def _set_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    for k, v in attrs.items():
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], str):
            v = np.array(v, dtype=h5py.string_dtype(fmt.STR_DTYPE))
        obj.attrs[k] = v


class Extraction:
    """One cache being extended: which shards are missing, shard writes, the final merge."""

    def __init__(self, cache: Path, items: fmt.Items, file_attrs: dict, *, shard_size: int = 1024):
        self.cache, self.items, self.file_attrs = Path(cache), items, file_attrs
        self.partial = fmt.partial_dir(self.cache)
        for stale in self.cache.parent.glob(f"{self.cache.name}.tmp-*"):
            stale.unlink()  # a merge killed before its rename; the partial folder still has its shards
        self.existing: dict[str, dict] = {}
        if self.cache.exists():
            with open_cache(self.cache) as f:
                old = read_items(f)
                if not old.same_rows(items):
                    raise ExpclipError(
                        f"{self.cache}: holds {len(old)} items that differ from this source's {len(items)} "
                        "(ids, labels, classes or frames); write to a new --out file"
                    )
                f.visititems(lambda name, obj: self._note_existing(name, obj))
        self.manifest = self._load_manifest(shard_size)

    def _note_existing(self, name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset) and name.split("/")[0] in fmt.ROOTS:
            self.existing[name] = _config_view(obj.attrs, obj.attrs)

    def _load_manifest(self, shard_size: int) -> dict:
        path = self.partial / MANIFEST
        items_digest = self.items.identity()
        if path.exists():
            manifest = json.loads(path.read_text("utf-8"))
            if manifest["items_digest"] != items_digest:
                raise ExpclipError(
                    f"{self.partial}: an unfinished run for different items is in this folder; "
                    "finish it with its own source, or delete the folder"
                )
            return manifest
        return {"format_version": fmt.FORMAT_VERSION, "items_digest": items_digest, "shard_size": shard_size, "groups": {}}

    def _save_manifest(self) -> None:
        self.partial.mkdir(parents=True, exist_ok=True)
        path = self.partial / MANIFEST
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(self.manifest, indent=1), "utf-8"))

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    def _check(self, path: str, config: dict) -> bool:
        """Refuse a different configuration under an existing key; True when the cache has it."""
        found = [(str(self.cache), self.existing.get(path))]
        found.append((str(self.partial), self.manifest["groups"].get(path, {}).get("config")))
        wanted = _config_view(config, config)
        for where, attrs in found:
            if attrs is None:
                continue
            had = _config_view(attrs, wanted)
            if had != wanted:
                raise ExpclipError(
                    f"{where}: /{path} was made by [{_describe(had)}]; this run asks for "
                    f"[{_describe(wanted)}] under the same key; use another --out file"
                )
        return path in self.existing

    def need(self, path: str, config: dict) -> bool:
        """Register a group aligned with /items (e.g. "image/<key>") and the configuration that
        makes it; False when the cache already holds it with that configuration."""
        if self._check(path, config):
            return False
        if path not in self.manifest["groups"]:
            self.manifest["groups"][path] = {"config": config, "row_shape": None, "dtype": None, "attrs": None}
            self._save_manifest()
        return True

    def start(self, path: str, attrs: dict, row_shape: tuple[int, ...], dtype: str = "float16") -> None:
        """Record what is known once the encoder is loaded: attributes, row shape, dtype."""
        group = self.manifest["groups"][path]
        if group["row_shape"] not in (None, list(row_shape)) or group["dtype"] not in (None, dtype):
            raise ExpclipError(
                f"{self.partial}: /{path} was started with rows {group['row_shape']} {group['dtype']}, "
                f"this run makes {list(row_shape)} {dtype}; delete the folder or use the same options"
            )
        group.update(attrs={**attrs, **group["config"]}, row_shape=list(row_shape), dtype=dtype)
        self._save_manifest()

    def started(self, path: str) -> bool:
        return self.manifest["groups"][path]["attrs"] is not None

    def _shard_file(self, path: str, start: int, stop: int) -> Path:
        return self.partial / path / f"{start:09d}-{stop:09d}.h5"

    def ranges(self) -> list[tuple[int, int]]:
        n, s = len(self.items), self.shard_size
        return [(a, min(a + s, n)) for a in range(0, n, s)]

    def missing(self, path: str) -> list[tuple[int, int]]:
        """Shard row ranges of a registered group that no finished shard file holds yet."""
        if path in self.existing:
            return []
        return [r for r in self.ranges() if not self._shard_file(path, *r).exists()]

    def write_shard(self, path: str, start: int, stop: int, rows: np.ndarray, failures: dict[int, str]) -> None:
        """Atomically write rows [start, stop) of a group; `failures` maps row -> reason."""
        spec = self.manifest["groups"][path]
        expected = (stop - start, *spec["row_shape"])
        if rows.shape != expected:
            raise ValueError(f"shard {path}[{start}:{stop}] has shape {rows.shape}, expected {expected}")

        def fill(f: h5py.File) -> None:
            f.create_dataset("rows", data=rows.astype(spec["dtype"]))
            f.create_dataset("failed_row", data=np.array(sorted(failures), dtype=np.int64))
            write_strings(f, "failed_reason", [failures[r] for r in sorted(failures)])

        _write_h5(self._shard_file(path, start, stop), fill)

    def write_small(self, path: str, data: np.ndarray, attrs: dict) -> None:
        """A dataset not aligned with /items (text features): one atomic file, merged at the end."""
        _write_h5(self.partial / f"{path}.h5", lambda f: _set_attrs(f.create_dataset("rows", data=data), attrs))

    def need_small(self, path: str, config: dict) -> bool:
        """Like `need` for a dataset not aligned with /items; its attrs must include `config`.

        A file left in the partial folder by a run with another configuration is redone.
        """
        if self._check(path, config):
            return False
        done = self.partial / f"{path}.h5"
        if not done.exists():
            return True
        with h5py.File(done, "r") as f:
            return _config_view(f["rows"].attrs, config) != _config_view(config, config)

    def unfinished(self) -> list[str]:
        """Registered groups that still miss shards (or were never started)."""
        return [p for p in self.manifest["groups"] if not self.started(p) or self.missing(p)]

    def finalize(self) -> dict[str, str]:
        """Merge the old cache and every shard into a new file, marker last, rename; returns failures."""
        if self.unfinished():
            raise RuntimeError(f"finalize() before every shard is written: {self.unfinished()}")
        failures: dict[str, str] = {}
        write_atomically(self.cache, lambda tmp: self._merge_into(tmp, failures))
        shutil.rmtree(self.partial, ignore_errors=True)
        return failures

    def _merge_into(self, tmp: Path, failures: dict[str, str]) -> None:
        """The new cache: old groups copied, shards merged, items and failures, marker last."""
        ok = np.ones(len(self.items), dtype=bool)
        with h5py.File(tmp, "w") as out:
            out.attrs["format"] = fmt.FORMAT
            out.attrs["format_version"] = fmt.FORMAT_VERSION
            out.attrs["kind"] = self.items.kind
            out.attrs["expclip_version"] = __version__
            _set_attrs(out, self.file_attrs)
            if self.cache.exists():
                with open_cache(self.cache) as old:
                    ok &= old["items/ok"][:]
                    failures.update(read_failures(old))
                    for root in fmt.ROOTS:
                        if root in old:
                            old.copy(old[root], out, name=root)
            for path, group in self.manifest["groups"].items():
                self._merge_group(out, path, group, ok, failures)
            for small in sorted(self.partial.glob("text/**/*.h5")) if self.partial.exists() else []:
                path = small.relative_to(self.partial).with_suffix("").as_posix()
                with h5py.File(small, "r") as src:
                    src.copy(src["rows"], out, name=path)
                    out[path].attrs["sha256"] = fmt.digest([src["rows"][:]])
            write_items(out, self.items, ok)
            write_failures(out, failures)
            out.flush()
            out.attrs["complete"] = True

    def _merge_group(self, out: h5py.File, path: str, group: dict, ok: np.ndarray, failures: dict[str, str]) -> None:
        n = len(self.items)
        shape = (n, *group["row_shape"])
        chunk_rows = max(1, min(n, (1 << 20) // max(1, int(np.prod(group["row_shape"])) * 2)))
        ds = out.create_dataset(path, shape=shape, dtype=group["dtype"], chunks=(chunk_rows, *group["row_shape"]))
        def copied_shards() -> Iterator[np.ndarray]:
            """Each shard's rows, copied into the dataset as they are hashed (one shard in memory)."""
            for start, stop in self.ranges():
                with h5py.File(self._shard_file(path, start, stop), "r") as shard:
                    rows = shard["rows"][:]
                    for r, reason in zip(shard["failed_row"][:], shard["failed_reason"][:], strict=True):
                        ok[int(r)] = False
                        failures.setdefault(self.items.ids[int(r)], reason.decode())
                ds[start:stop] = rows
                yield rows

        ds.attrs["sha256"] = fmt.digest(copied_shards())
        _set_attrs(ds, group["attrs"] or group["config"])


def write_arrays(
    cache: Path,
    items: fmt.Items,
    *,
    file_attrs: dict,
    aligned: dict[str, tuple[np.ndarray, dict]],
    small: dict[str, tuple[np.ndarray, dict]] | None = None,
    dtype: str = "float16",
) -> dict[str, str]:
    """Write (or extend) a cache from arrays already in memory, through the same atomic path.

    For synthetic caches (tests, benchmarks, the demo) and for users converting
    features computed elsewhere; `aligned` maps group path -> (rows, attrs).
    """
    job = Extraction(Path(cache), items, file_attrs, shard_size=max(1, len(items)))
    for path, (rows, attrs) in aligned.items():
        if job.need(path, attrs):
            job.start(path, attrs, tuple(rows.shape[1:]), dtype)
            for start, stop in job.missing(path):
                job.write_shard(path, start, stop, rows[start:stop], {})
    for path, (rows, attrs) in (small or {}).items():
        if job.need_small(path, {k: v for k, v in attrs.items() if k != "sha256"}):
            job.write_small(path, rows, attrs)
    return job.finalize()
