"""Names, attributes and key rules of the cache format (docs/cache-format.md).

Everything that both the writer and the reader must agree on lives here, so
that the documented format has exactly one implementation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from expclip.cache.atomic import followed

FORMAT = "expclip-cache"
# 2: every part checksummed (docs/cache-format.md, *Checksums*); 1: expclip 0.1.0's, the first without them.
FORMAT_VERSION = 2
ROOTS = ("image", "teacher", "text")
STR_DTYPE = "utf-8"


@dataclass
class Items:
    """The rows of a cache: one per image or clip, in source order."""

    ids: list[str]
    labels: np.ndarray  # (N,) int64, -1 = unlabelled
    class_names: list[str]
    frame_index: np.ndarray | None = None  # (N, T) int32, clips only
    num_frames: np.ndarray | None = None  # (N,) int32, clips only
    ok: np.ndarray | None = field(default=None, compare=False)  # (N,) bool, set by the reader

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> str:
        return "images" if self.frame_index is None else "clips"

    def same_rows(self, other: "Items") -> bool:
        """True when both describe the same rows (ids, labels, classes, frames)."""
        frames_equal = (self.frame_index is None and other.frame_index is None) or (
            self.frame_index is not None
            and other.frame_index is not None
            and np.array_equal(self.frame_index, other.frame_index)
        )
        return (
            self.ids == other.ids
            and np.array_equal(self.labels, other.labels)
            and self.class_names == other.class_names
            and frames_equal
        )

    def identity(self) -> str:
        """sha256 of what defines the rows (ids, labels, class names, sampled frames).

        The one item-set identity: the writer refuses to resume other items with
        it, and the reader's fingerprints (hence ablation run keys) include it.
        """
        frames = [] if self.frame_index is None else [np.asarray(self.frame_index, dtype=np.int32)]
        text = json.dumps([self.ids, self.class_names]).encode()
        return digest([np.frombuffer(text, dtype=np.uint8), np.asarray(self.labels, dtype=np.int64), *frames])


def sanitize(text: str) -> str:
    """A cache key fragment: characters outside [A-Za-z0-9._-] become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("_") or "_"


OFFICIAL_SUFFIX = "+official"  # keys of features made with --transform exp-clip-official


def encoder_key(parts: list[str], official: bool) -> str:
    """`<part>@<part>...`, each part sanitised, `+official` for the official transform (docs/cache-format.md)."""
    key = "@".join(sanitize(part) for part in parts)
    return key + OFFICIAL_SUFFIX if official else key


def image_path(key: str) -> str:
    return f"image/{key}"


def teacher_path(teacher_key: str, instruction_key: str) -> str:
    return f"teacher/{teacher_key}/{instruction_key}"


def text_path(key: str, prompt_set: str) -> str:
    return f"text/{key}/{prompt_set}"


def beside(cache: Path, suffix: str) -> Path:
    """`CACHE<suffix>`, a file or folder that belongs to a cache, beside the file the cache path names:
    a symbolic link and its target are one cache, with one lock, partial folder and index folder."""
    real = followed(cache)
    return real.with_name(real.name + suffix)


def partial_dir(cache: Path) -> Path:
    """Folder of a run in progress: manifest plus shard files (see 'Resuming')."""
    return beside(cache, ".partial")


def digest(blocks: Iterable[np.ndarray | bytes]) -> str:
    """sha256 of arrays' (or byte strings') bytes in order: the content fingerprint stored as `sha256`, and the
    one hashing loop of datasets and files read a block at a time (checksums, verify, heads, indexes)."""
    h = hashlib.sha256()
    for block in blocks:
        h.update(block if isinstance(block, bytes) else np.ascontiguousarray(block).tobytes())
    return h.hexdigest()
