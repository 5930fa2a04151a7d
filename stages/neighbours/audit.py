"""`audit`: near-duplicate pairs across caches (train vs test) and within each, by cosine of CLIP features.

Every sampled frame of a clip is compared (a clip sharing one frame with
another is a duplicate), plain CLIP image features normalised. Across caches,
an exact index is built over each `against` cache and the audited caches are
streamed through it in blocks, so the larger side is never in memory whole;
within a cache, its rows are searched against its own index (pairs inside one
clip are not duplicates and are left out). faiss's `range_search` returns the
pairs at or above the threshold on a CPU; on a GPU, which has no range search,
a k-nearest search stands in for it and any row whose k-th neighbour still
clears the threshold is searched again on the CPU, so nothing is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.neighbours.index import on_gpus
from expclip.stages.neighbours.vectors import BLOCK_ROWS, Rows, all_vectors, cache_vectors
from expclip.stages.shared.select import evaluation_key
from expclip.stages.shared.vocabulary import NEAR_DUPLICATE

THRESHOLD = NEAR_DUPLICATE
GPU_K = 64  # neighbours a GPU search asks for before falling back to the CPU's range search


@dataclass
class Pairs:
    """Pairs of rows with cosine >= threshold: query rows of one cache against indexed rows of another."""

    query: Rows
    found: Rows
    score: np.ndarray  # (P,) float32

    def __len__(self) -> int:
        return len(self.score)


def audit(caches: list[Path], against: list[Path], *, threshold: float = THRESHOLD, within: bool = True,
          clip_key: str | None = None, block_rows: int = BLOCK_ROWS) -> dict:
    """Pairs and counts: every cache in `caches` against every one in `against`, and each cache with itself."""
    if not 0 < threshold <= 1:
        raise ExpclipError(f"--threshold {threshold}: a cosine in (0, 1]")
    paths = [Path(p) for p in dict.fromkeys([*caches, *against])]
    key, described = _common_key(paths, clip_key)
    results = []
    for b in dict.fromkeys(map(Path, against)):
        index, rows = _index(b, key)
        for a in dict.fromkeys(map(Path, caches)):
            if a != b:
                results.append((a, b, _search(a, key, index, rows, threshold, block_rows, same=False)))
    if within:
        for c in paths:
            index, rows = _index(c, key)
            results.append((c, c, _search(c, key, index, rows, threshold, block_rows, same=True)))
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


def _index(cache: Path, key: str) -> tuple[faiss.Index, Rows]:
    """An exact inner-product index of a cache's per-frame vectors (on the GPUs when faiss sees any)."""
    with CacheReader(cache) as reader:
        rows, vectors = all_vectors(reader, key, None, per_frame=True)
    index = faiss.IndexFlatIP(vectors.shape[1] if vectors.size else 1)
    if len(rows):
        index.add(vectors)
    return index, rows


def _search(cache: Path, key: str, index: faiss.Index, rows: Rows, threshold: float, block_rows: int,
            same: bool) -> Pairs:
    """Stream `cache` through `index` a block at a time; keep pairs >= threshold (within one cache: each
    unordered pair once, never two frames of one item)."""
    gpu = on_gpus(index) if index.ntotal else index
    parts, at = [], 0
    with CacheReader(cache) as reader:
        for query_rows, vectors in cache_vectors(reader, key, None, per_frame=True, block_rows=block_rows):
            if not index.ntotal:
                break
            q, f, s = _range(index, gpu, vectors, threshold)
            q_global = q + at
            if same:
                keep = (q_global < f) & (query_rows.item[q] != rows.item[f])
                q, f, s = q[keep], f[keep], s[keep]
            parts.append((_take(query_rows, q), _take(rows, f), s))
            at += len(query_rows)
    if not parts:
        return Pairs(Rows(np.empty(0, np.int64)), Rows(np.empty(0, np.int64)), np.empty(0, np.float32))
    return Pairs(_join([p[0] for p in parts]), _join([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


def _range(cpu: faiss.Index, gpu: faiss.Index, x: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(query row, indexed row, score) of every pair with score >= threshold."""
    radius = float(np.nextafter(np.float32(threshold), np.float32(-1)))  # faiss keeps scores > radius
    if gpu is cpu:
        lims, scores, found = cpu.range_search(x, radius)
        query = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
    else:
        k = min(GPU_K, cpu.ntotal)
        scores, found = gpu.search(x, k)
        full = np.flatnonzero(scores[:, -1] >= threshold)  # may have more than k: ask the CPU
        hit = (scores >= threshold) & (found >= 0)
        hit[full] = False
        query, column = np.nonzero(hit)
        found, scores = found[query, column], scores[query, column]
        if len(full):
            lims, more_scores, more_found = cpu.range_search(x[full], radius)
            query = np.concatenate([query, full[np.repeat(np.arange(len(full)), np.diff(lims).astype(np.int64))]])
            found, scores = np.concatenate([found, more_found]), np.concatenate([scores, more_scores])
    keep = scores >= threshold
    return query[keep].astype(np.int64), found[keep].astype(np.int64), scores[keep].astype(np.float32)


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
