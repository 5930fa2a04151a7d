"""A cache's rows as unit vectors for faiss: plain CLIP features, or mapped through a head as zero-shot does.

Search compares whole items, represented as `stages.shared.scoring` scores
them (an image's feature; a clip's mean of unit frames, or through a head its
mean mapped frame; normalised). Audit compares frames: a clip gives one vector
per sampled frame, so a test clip sharing one frame with a training clip is
caught. Rows marked failed (items/ok False) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from expclip.cache.reader import CacheReader
from expclip.stages.shared.heads import Head
from expclip.stages.shared.scoring import blocks, vector_space


@dataclass
class Rows:
    """What each vector stands for: an item, and for per-frame vectors the frame's slot in the clip."""

    item: np.ndarray  # (M,) int64
    frame: np.ndarray | None = None  # (M,) int32, per-frame vectors of clips only

    def __len__(self) -> int:
        return len(self.item)


def cache_vectors(reader: CacheReader, key: str, head: Head | None, *, per_frame: bool,
                  block_rows: int | None = None) -> Iterator[tuple[Rows, np.ndarray]]:
    """(rows, float32 unit vectors) of the usable items, a block at a time (scoring.blocks)."""
    space = vector_space(head)
    for items, block in blocks(reader, key, reader.items().ok, block_rows):
        features = torch.from_numpy(block)
        if per_frame and features.ndim == 3:
            t = features.shape[1]
            vectors = space.images(features.reshape(-1, features.shape[-1]))
            yield Rows(np.repeat(items, t), np.tile(np.arange(t, dtype=np.int32), len(items))), vectors.numpy()
        else:
            yield Rows(items), space.images(features).numpy()


def all_vectors(reader: CacheReader, key: str, head: Head | None, *, per_frame: bool) -> tuple[Rows, np.ndarray]:
    """Every usable row's vector at once (for an index: faiss holds them anyway)."""
    parts = list(cache_vectors(reader, key, head, per_frame=per_frame))
    if not parts:
        return Rows(np.empty(0, np.int64)), np.empty((0, 0), np.float32)
    frames = [p[0].frame for p in parts]
    rows = Rows(np.concatenate([p[0].item for p in parts]),
                None if frames[0] is None else np.concatenate(frames))
    return rows, np.ascontiguousarray(np.concatenate([p[1] for p in parts]), dtype=np.float32)
