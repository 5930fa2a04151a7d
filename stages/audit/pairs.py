"""`audit`: near-duplicate pairs across caches (train vs test) and within each, by cosine of CLIP features.

Every sampled frame of a clip is compared (a clip sharing one frame with
another is a duplicate), plain CLIP image features normalised. Across caches,
an exact index is built over each `against` cache and the audited caches are
streamed through it in blocks, so the larger side is never in memory whole;
within a cache, its rows are searched against its own index (pairs inside one
clip are not duplicates and are left out). Search is exact: one float32
matrix product per block of queries (torch, on the CPU or a GPU), every score
compared with the threshold, so no pair is cut off by a k (see `Exact` for why
not faiss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.audit.config import AuditConfig
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.progress import progress
from expclip.stages.shared.scoring import BLOCK_ROWS
from expclip.stages.shared.select import evaluation_key
from expclip.stages.shared.vectors import Rows, all_vectors, cache_vectors
from expclip.stages.shared.vocabulary import NEAR_DUPLICATE

THRESHOLD = NEAR_DUPLICATE
SCORES_PER_BLOCK = 1 << 26  # queries x indexed rows scored at once: 256 MB of float32 scores


@dataclass
class Pairs:
    """Pairs of rows with cosine >= threshold: query rows of one cache against indexed rows of another."""

    query: Rows
    found: Rows
    score: np.ndarray  # (P,) float32

    def __len__(self) -> int:
        return len(self.score)


def audit(caches: list[Path], against: list[Path], config: AuditConfig | None = None, *,
          block_rows: int = BLOCK_ROWS, **settings: Any) -> dict:
    """Pairs and counts: every cache in `caches` against every one in `against`, and each cache with itself
    (`within`). `config` (default: AuditConfig()) with `settings` replacing its fields."""
    cfg = dataclasses.replace(config or AuditConfig(), **settings)
    cfg.check()
    threshold, within = cfg.threshold, cfg.within
    where = resolve_device(cfg.device)
    paths = [Path(p) for p in dict.fromkeys([*caches, *against])]
    key, described = _common_key(paths, cfg.clip_key)
    results = []
    across = [(a, b) for b in dict.fromkeys(map(Path, against)) for a in dict.fromkeys(map(Path, caches)) if a != b]
    usable = {Path(d["path"]): d["rows"] for d in described}
    with progress("items") as bar:  # items searched, over every cache searched against an index
        task = bar.add_task("audit", total=sum(usable[a] for a, _ in across) + (sum(usable.values()) if within else 0))
        done = partial(bar.advance, task)
        for b in dict.fromkeys(b for _, b in across):
            index, rows = _index(b, key, where)
            for a in (a for a, of in across if of == b):
                results.append((a, b, _search(a, key, index, rows, threshold, block_rows, False, done)))
        if within:
            for c in paths:
                index, rows = _index(c, key, where)
                results.append((c, c, _search(c, key, index, rows, threshold, block_rows, True, done)))
    return {"threshold": threshold, "clip_key": key, "caches": described,
            "counts": [_count(a, b, p) for a, b, p in results],
            "pairs": sorted((row for a, b, p in results for row in _records(a, b, p)), key=lambda r: -r["score"])}


def _common_key(paths: list[Path], clip_key: str | None) -> tuple[str, list[dict]]:
    """The one CLIP key every cache is compared under (they must share it), and each cache's identity."""
    keys, described = {}, []
    for path in paths:
        with CacheReader(path) as reader:
            keys[path] = evaluation_key(reader, None, clip_key)
            described.append({"path": str(path), "fingerprint": reader.fingerprint([fmt.image_path(keys[path])]),
                              "rows": int(reader.items().ok.sum())})
    if len(set(keys.values())) > 1:
        listed = ", ".join(f"{p} ({k})" for p, k in keys.items())
        raise ExpclipError(f"audit compares features of one CLIP encoder; these caches hold different ones: {listed}")
    return next(iter(keys.values())), described


class Exact:
    """Every indexed row at or above a cosine threshold of a query, by float32 matrix products (torch).

    Not faiss's `range_search`: the OpenBLAS inside the faiss-cpu wheel may not
    recognise a recent CPU and then multiplies with generic kernels, several
    times slower than torch's, and faiss has no range search on GPUs.
    """

    def __init__(self, vectors: np.ndarray, device: torch.device) -> None:
        self.rows, self.device = len(vectors), device
        self.matrix = torch.from_numpy(vectors).to(device)

    def range(self, x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, indexed row, score) of every pair with score >= threshold."""
        queries = torch.from_numpy(x).to(self.device)
        step = max(1, SCORES_PER_BLOCK // max(1, self.rows))  # bounds the (queries, rows) score matrix
        parts = []
        for a in range(0, len(queries), step):
            scores = queries[a:a + step] @ self.matrix.T  # float32 (TF32 is off unless a run lets it in)
            q, f = (scores >= threshold).nonzero(as_tuple=True)
            parts.append((q + a, f, scores[q, f]))
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        q, f, s = (torch.cat(p).cpu().numpy() for p in zip(*parts))
        return q.astype(np.int64), f.astype(np.int64), s.astype(np.float32)


def _index(cache: Path, key: str, device: torch.device) -> tuple[Exact, Rows]:
    """An exact index of a cache's per-frame vectors."""
    with CacheReader(cache) as reader:
        rows, vectors = all_vectors(reader, key, None, per_frame=True)
    return Exact(vectors, device), rows


def _search(cache: Path, key: str, index: Exact, rows: Rows, threshold: float, block_rows: int,
            same: bool, done: Callable[[int], None]) -> Pairs:
    """Stream `cache` through `index` a block at a time; keep pairs >= threshold (within one cache: each
    unordered pair once, never two frames of one item). `done(n)`: n more items searched."""
    parts, at = [], 0
    with CacheReader(cache) as reader:
        for query_rows, vectors in cache_vectors(reader, key, None, per_frame=True, block_rows=block_rows):
            if not index.rows:  # nothing to pair with: the rest of the cache is not read
                done(int(reader.items().ok.sum()))
                break
            done(len(np.unique(query_rows.item)))  # a block holds whole items (every frame of a clip)
            q, f, s = index.range(vectors, threshold)
            if same:
                keep = (q + at < f) & (query_rows.item[q] != rows.item[f])
                q, f, s = q[keep], f[keep], s[keep]
            parts.append((_take(query_rows, q), _take(rows, f), s))
            at += len(query_rows)
    if not parts:
        return Pairs(Rows(np.empty(0, np.int64)), Rows(np.empty(0, np.int64)), np.empty(0, np.float32))
    return Pairs(_join([p[0] for p in parts]), _join([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


def _take(rows: Rows, at: np.ndarray) -> Rows:
    return Rows(rows.item[at], None if rows.frame is None else rows.frame[at])


def _join(parts: list[Rows]) -> Rows:
    frames = [p.frame for p in parts]
    return Rows(np.concatenate([p.item for p in parts]), None if frames[0] is None else np.concatenate(frames))


def _count(a: Path, b: Path, pairs: Pairs) -> dict:
    return {"a": str(a), "b": str(b), "within": a == b, "pairs": len(pairs),
            "items_a": int(len(np.unique(pairs.query.item))), "items_b": int(len(np.unique(pairs.found.item)))}


def _records(a: Path, b: Path, pairs: Pairs) -> list[dict]:
    """One dict per pair with the items' ids (and frame slots for clips)."""
    with CacheReader(a) as ra, CacheReader(b) as rb:
        ids_a, ids_b = ra.items().ids, rb.items().ids
    return [{"a": str(a), "a_id": ids_a[pairs.query.item[i]], "a_frame": _frame(pairs.query, i),
             "b": str(b), "b_id": ids_b[pairs.found.item[i]], "b_frame": _frame(pairs.found, i),
             "score": float(pairs.score[i])} for i in range(len(pairs))]


def _frame(rows: Rows, i: int) -> int | None:
    return None if rows.frame is None else int(rows.frame[i])


def flagged_items(report: dict, cache: Path) -> np.ndarray:
    """Item indices of `cache` in a pair with another cache: the rows leak-free training drops."""
    with CacheReader(cache) as reader:
        position = {item_id: i for i, item_id in enumerate(reader.items().ids)}
    hits = {position[p["a_id"]] for p in report["pairs"] if p["a"] == str(cache) and p["b"] != p["a"]}
    hits |= {position[p["b_id"]] for p in report["pairs"] if p["b"] == str(cache) and p["b"] != p["a"]}
    return np.array(sorted(hits), dtype=np.int64)
