"""A cache's rows as unit vectors for faiss: plain CLIP features, or mapped through a head as zero-shot does.

Search compares whole items: an image's feature, or for a clip the mean of its
unit frame features (through a head: the head applied per frame, averaged),
normalised, as `evaluate` scores them. Audit compares frames: a clip gives one
vector per sampled frame, so a test clip sharing one frame with a training
clip is caught. Rows marked failed (items/ok False) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.shared.heads import Head

BLOCK_ROWS = 1 << 16  # feature rows read and mapped at once (~100 MB of 768-wide float16)


@dataclass
class Rows:
    """What each vector stands for: an item, and for per-frame vectors the frame's slot in the clip."""

    item: np.ndarray  # (M,) int64
    frame: np.ndarray | None = None  # (M,) int32, per-frame vectors of clips only

    def __len__(self) -> int:
        return len(self.item)


def unit(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(v, dim=-1)


def mapped(head: Head | None, features: torch.Tensor) -> torch.Tensor:
    """float32 (..., d) -> (..., m): through the head when there is one (no normalisation)."""
    if head is None:
        return features
    with torch.inference_mode():
        return head.module(features)


def item_vectors(features: torch.Tensor, head: Head | None) -> torch.Tensor:
    """(n, d) images or (n, T, d) clips -> (n, m) unit vectors, as zero-shot scoring represents an item."""
    x = features.float()
    if x.ndim == 2:
        return unit(mapped(head, x))
    if head is None:
        return unit(unit(x).mean(dim=1))
    return unit(mapped(head, x).mean(dim=1))


def cache_vectors(reader: CacheReader, key: str, head: Head | None, *, per_frame: bool,
                  block_rows: int = BLOCK_ROWS) -> Iterator[tuple[Rows, np.ndarray]]:
    """(rows, float32 unit vectors) of the usable items, a block at a time (contiguous reads)."""
    path = fmt.image_path(key)
    shape, _ = reader.group_shape(path)
    ok = reader.items().ok
    frames = shape[1] if len(shape) == 3 else 1
    step = max(1, block_rows // frames)
    for a in range(0, shape[0], step):
        keep = np.flatnonzero(ok[a:a + step])
        if not len(keep):
            continue
        block = torch.from_numpy(reader.rows(path, a, a + len(ok[a:a + step]))[keep])
        items = (a + keep).astype(np.int64)
        if per_frame and block.ndim == 3:
            t = block.shape[1]
            vectors = unit(mapped(head, block.float().reshape(-1, block.shape[-1])))
            yield Rows(np.repeat(items, t), np.tile(np.arange(t, dtype=np.int32), len(items))), vectors.numpy()
        else:
            yield Rows(items), item_vectors(block, head).numpy()


def all_vectors(reader: CacheReader, key: str, head: Head | None, *, per_frame: bool) -> tuple[Rows, np.ndarray]:
    """Every usable row's vector at once (for an index: faiss holds them anyway)."""
    parts = list(cache_vectors(reader, key, head, per_frame=per_frame))
    if not parts:
        return Rows(np.empty(0, np.int64)), np.empty((0, 0), np.float32)
    frames = [p[0].frame for p in parts]
    rows = Rows(np.concatenate([p[0].item for p in parts]),
                None if frames[0] is None else np.concatenate(frames))
    return rows, np.ascontiguousarray(np.concatenate([p[1] for p in parts]), dtype=np.float32)
