"""`search`: the items of a cache nearest to query vectors (texts or images already encoded by CLIP).

Queries are raw CLIP features of the cache's own encoder; with a head they are
mapped by it like the cache's items, so scores are the cosines zero-shot
scoring compares (plain CLIP space without one).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expclip.base.errors import ExpclipError
from expclip.cache.reader import CacheReader
from expclip.stages.search.config import SearchConfig
from expclip.stages.search.index import cached_index, on_gpus
from expclip.stages.shared.heads import Head
from expclip.stages.shared.memory import available_bytes
from expclip.stages.shared.scoring import vector_space
from expclip.stages.shared.select import evaluation_key


def search(cache: Path, queries: np.ndarray, config: SearchConfig | None = None, *, head: Head | None = None,
           **settings: Any) -> dict:
    """For each query row, the `k` nearest usable items: {"index": provenance, "hits": [[{rank, score, item,
    id, label}, ...] per query]}. `config` (default: SearchConfig()) with `settings` replacing its fields."""
    cfg = dataclasses.replace(config or SearchConfig(), **settings)
    cfg.check()
    k, exact = cfg.k, cfg.exact
    with CacheReader(cache) as reader:
        key = evaluation_key(reader, head, cfg.clip_key)
        items = reader.items()
    found = cached_index(cache, key, head, exact=exact, budget=available_bytes() // 2)
    q = vector_space(head).images(torch.from_numpy(np.asarray(queries, dtype=np.float32))).numpy()
    if q.shape[1] != found.meta["dim"]:
        raise ExpclipError(f"{cache}: queries have {q.shape[1]} dimensions, its index {found.meta['dim']}")
    index = on_gpus(found.index) if found.meta["spec"] == "Flat" else found.index  # faiss has no GPU HNSW
    scores, positions = index.search(np.ascontiguousarray(q), min(k, len(found.rows)))
    hits = []
    for score_row, position_row in zip(scores, positions, strict=True):
        hits.append([_hit(rank, float(s), int(found.rows.item[p]), items)
                     for rank, (s, p) in enumerate(zip(score_row, position_row, strict=True), start=1) if p >= 0])
    return {"cache": str(cache), "clip_key": key, "index": found.meta, "index_built": found.built, "hits": hits}


def _hit(rank: int, score: float, item: int, items) -> dict:
    label = int(items.labels[item])
    return {"rank": rank, "score": score, "item": item, "id": items.ids[item],
            "label": items.class_names[label] if 0 <= label < len(items.class_names) else None}
