"""Typed, read-only views of a finished cache (format in docs/cache-format.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from expclip.cache import format as fmt
from expclip.base.errors import ExpclipError


def attr_value(value):
    """An HDF5 attribute as plain Python: str, int, float, bool, or a list of those."""
    if isinstance(value, bytes):
        return value.decode(fmt.STR_DTYPE)
    if isinstance(value, np.ndarray):
        return [attr_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_cache(path: Path) -> h5py.File:
    """Open a cache read-only, refusing files that are not complete expclip caches."""
    path = Path(path)
    if not path.is_file():
        raise ExpclipError(f"{path}: no such cache file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ExpclipError(f"{path}: not a readable HDF5 file ({e})") from None
    if attr_value(f.attrs.get("format")) != fmt.FORMAT:
        f.close()
        raise ExpclipError(f"{path}: not an expclip cache (file attribute format != {fmt.FORMAT!r})")
    if int(f.attrs.get("format_version", -1)) > fmt.FORMAT_VERSION:
        f.close()
        raise ExpclipError(f"{path}: format_version {f.attrs['format_version']} is newer than this expclip reads")
    if not bool(f.attrs.get("complete", False)):
        f.close()
        raise ExpclipError(f"{path}: incomplete cache (no completion marker); re-run `expclip extract`")
    return f


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode(fmt.STR_DTYPE) if isinstance(s, bytes) else str(s) for s in ds[:]]


def read_items(f: h5py.File) -> fmt.Items:
    g = f["items"]
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
    if "failures" not in f:
        return {}
    return dict(zip(_strings(f["failures/id"]), _strings(f["failures/reason"]), strict=True))


@dataclass(frozen=True)
class TextFeatures:
    """One prompt set: raw CLIP text features and the canonical class of each prompt."""

    features: np.ndarray  # (K, D) float32
    prompts: list[str]
    class_names: list[str]  # the protocol's canonical names
    class_index: np.ndarray  # (K,) into class_names


class CacheReader:
    """Read a cache by role (image / teacher / text) without knowing HDF5 paths."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open_cache(self.path)

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def attrs(self) -> dict:
        return {k: attr_value(v) for k, v in self._f.attrs.items()}

    @property
    def dataset(self) -> str:
        return str(self.attrs.get("dataset", self.path.stem))

    @property
    def kind(self) -> str:
        return str(self.attrs["kind"])

    def items(self) -> fmt.Items:
        return read_items(self._f)

    def failures(self) -> dict[str, str]:
        return read_failures(self._f)

    def _keys(self, root: str) -> list[str]:
        return sorted(self._f[root].keys()) if root in self._f else []

    def image_keys(self) -> list[str]:
        return self._keys("image")

    def teacher_keys(self) -> list[tuple[str, str]]:
        return [(t, i) for t in self._keys("teacher") for i in sorted(self._f[f"teacher/{t}"].keys())]

    def text_sets(self, key: str) -> list[str]:
        return self._keys(f"text/{key}")

    def _dataset(self, path: str) -> h5py.Dataset:
        if path not in self._f:
            raise ExpclipError(f"{self.path}: has no /{path}")
        return self._f[path]

    def group_shape(self, path: str) -> tuple[tuple[int, ...], str]:
        ds = self._dataset(path)
        return ds.shape, str(ds.dtype)

    def group_attrs(self, path: str) -> dict:
        return {k: attr_value(v) for k, v in self._dataset(path).attrs.items()}

    def image(self, key: str) -> np.ndarray:
        """(N, D) or (N, T, D) raw CLIP image features as stored (float16 by default)."""
        return self._dataset(fmt.image_path(key))[:]

    def image_attrs(self, key: str) -> dict:
        return self.group_attrs(fmt.image_path(key))

    def teacher(self, teacher_key: str, instruction_key: str) -> np.ndarray:
        """(N, Dt) pooled teacher features as stored."""
        return self._dataset(fmt.teacher_path(teacher_key, instruction_key))[:]

    def teacher_attrs(self, teacher_key: str, instruction_key: str) -> dict:
        return self.group_attrs(fmt.teacher_path(teacher_key, instruction_key))

    def text(self, key: str, prompt_set: str) -> TextFeatures:
        ds = self._dataset(fmt.text_path(key, prompt_set))
        a = self.group_attrs(fmt.text_path(key, prompt_set))
        return TextFeatures(
            features=ds[:].astype(np.float32),
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
        text = "\n".join([*(self.group_attrs(p)["sha256"] for p in sorted(paths)), self.items().identity()])
        return fmt.digest([np.frombuffer(text.encode(), dtype=np.uint8)])
