"""fit-head's training pairs: which rows, and how batches reach the step — from memory or streamed.

`select` opens each cache once to choose its groups and usable rows (no
features read). When the selection fits the memory budget, `InMemory` reads
it whole, as float32 with the teacher rows normalised, and draws batches as
the official code does: one `torch.randperm(n)` per epoch from the seeded
generator, batch s = rows order[s·B:(s+1)·B], the last n mod B rows dropped.

Otherwise `Streamed` reads the caches in blocks of whole chunks (contiguous
slices: HDF5 serves scattered rows one at a time, re-reading their chunks) in a seeded random order, a
background thread reading the next buffer of blocks while the step trains on
the current one. Each buffer (plus the rows the previous one left over) is
shuffled with one `randperm` from the same generator and cut into batches;
what is left over (< B rows) goes into the next buffer, and the last
leftover of an epoch is dropped, so an epoch still has n // B batches and
sees each row at most once. What differs from a global shuffle: a batch
mixes rows of the blocks in one buffer only (buffer rows / block rows blocks,
out of all of them). The same seed and cache give the same batches.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.shared.exclusion import Exclusion
from expclip.stages.shared.select import training_keys

EPS = 1e-12  # F.normalize's floor on a norm
BLOCK_ROWS = 4096  # rows per streamed read: a multiple of every power-of-two chunk up to it
BUFFERS = 3  # a buffer gets budget / BUFFERS: one training, one being read, and room for the block being converted
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Selection:
    """The groups and usable rows of every training cache, known without reading a feature."""

    caches: list[Path]
    ok: list[np.ndarray]  # per cache: items/ok
    clip_key: str
    clip: dict
    teacher_key: str
    instruction_key: str
    teacher_provenance: dict  # the teacher group's attributes (family, model, instruction, weights_sha256, ...)
    d: int
    dt: int
    stored: tuple[np.dtype, np.dtype]  # what holds the image / teacher rows of every cache (the widest dtype)
    chunk_rows: list[int] = field(default_factory=list)  # rows per chunk of every selected group of every cache
    used: list[dict] = field(default_factory=list)  # path, fingerprint, rows used

    @property
    def n(self) -> int:
        return sum(int(ok.sum()) for ok in self.ok)

    @property
    def paths(self) -> tuple[str, str]:
        return fmt.image_path(self.clip_key), fmt.teacher_path(self.teacher_key, self.instruction_key)

    def in_memory_bytes(self) -> int:
        """Float32 features of every usable row, plus the largest group as stored while it is converted."""
        counts = [len(ok) for ok in self.ok]
        return self.n * (self.d + self.dt) * 4 + max(counts) * max(self.d * self.stored[0].itemsize,
                                                                     self.dt * self.stored[1].itemsize)


def select(caches: list[Path], clip_key: str | None = None, teacher_key: str | None = None,
           instruction: str | None = None, exclude: Exclusion | None = None) -> Selection:
    """Choose the groups (the first cache decides; the others must have them, at the same sizes and scale);
    rows in `exclude` count as unusable."""
    if not caches:
        raise ExpclipError("fit-head: give at least one CACHE")
    found: Selection | None = None
    for path in map(Path, caches):
        with CacheReader(path) as r:
            if r.kind != "images":
                raise ExpclipError(f"{path}: holds {r.kind}; fit-head trains on image caches only")
            key, tkey, ikey = training_keys(r, clip_key, teacher_key, instruction)
            clip_key, teacher_key, instruction = key, tkey, ikey
            paths = [fmt.image_path(key), fmt.teacher_path(tkey, ikey)]
            (xs, dtype), (es, edtype) = r.group_shape(paths[0]), r.group_shape(paths[1])
            if found is None:
                tattrs = r.teacher_attrs(tkey, ikey)
                found = Selection([], [], key, r.image_attrs(key), tkey, ikey,
                                  {k: v for k, v in tattrs.items() if k != "sha256"},
                                  xs[1], es[1], (np.dtype(dtype), np.dtype(edtype)))
            found.stored = (np.promote_types(found.stored[0], dtype), np.promote_types(found.stored[1], edtype))
            scale = r.image_attrs(key).get("logit_scale")
            if scale != found.clip.get("logit_scale"):
                raise ExpclipError(f"{path}: logit_scale {scale} differs from {found.caches[0]}'s "
                                   f"{found.clip.get('logit_scale')}")
            if (xs[1:], es[1:]) != ((found.d,), (found.dt,)):
                raise ExpclipError(f"{path}: feature sizes {xs[1:]}, {es[1:]} differ from {found.caches[0]}'s")
            ok = r.items().ok
            if exclude is not None:
                ok[exclude.rows.get(str(path), np.empty(0, np.int64))] = False
            found.caches.append(path)
            found.ok.append(ok)
            found.chunk_rows += [r.chunk_rows(p) for p in paths]
            found.used.append({"path": str(path), "fingerprint": r.fingerprint(paths), "rows": int(ok.sum())})
    if found.n == 0:
        raise ExpclipError(f"{', '.join(map(str, found.caches))}: no usable rows (items/ok is False everywhere)")
    return found


def _pairs(x: np.ndarray, e: np.ndarray, ok: np.ndarray, where: str, device: torch.device) -> Batch:
    """Usable rows as float32 on `device` (sent as stored: float16 halves the copy), teacher rows normalised;
    a NaN or inf in a usable row is an error."""
    images = torch.from_numpy(x if ok.all() else x[ok]).to(device).float()
    teacher = torch.from_numpy(e if ok.all() else e[ok]).to(device).float()
    if not (torch.isfinite(images.sum()) and torch.isfinite(teacher.sum())):
        raise ExpclipError(f"{where}: non-finite features in rows marked ok")
    return images, _normalised(teacher)


def _normalised(teacher: torch.Tensor) -> torch.Tensor:
    """Float32 teacher rows divided by their norms, in place (as F.normalize does, with its floor)."""
    return teacher.div_(torch.linalg.vector_norm(teacher, dim=1, keepdim=True).clamp_min_(EPS))


class InMemory:
    """Every usable row in memory (on the training device); batches by one global permutation per epoch."""

    mode = "in-memory"

    def __init__(self, selection: Selection, device: torch.device) -> None:
        parts = []
        for path, ok in zip(selection.caches, selection.ok, strict=True):
            with CacheReader(path) as r:
                parts.append(_pairs(r.rows(selection.paths[0], 0, len(ok)), r.rows(selection.paths[1], 0, len(ok)),
                                    ok, str(path), device))
        self.images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        self.teacher = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]

    def describe(self) -> dict:
        return {"mode": self.mode}

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        n = len(self.images)
        order = torch.randperm(n, generator=generator).to(self.images.device)
        for step in range(n // batch_size):
            idx = order[step * batch_size:(step + 1) * batch_size]
            yield self.images.index_select(0, idx), self.teacher.index_select(0, idx)


def block_rows(chunk_rows: list[int], most: int) -> int:
    """Rows per streamed block: whole chunks of every group (their common multiple), about BLOCK_ROWS, at
    most `most` (a small budget): then whole chunks of the group with the smallest ones only."""
    common = math.lcm(*chunk_rows)
    if common > 2 * BLOCK_ROWS:  # chunks that do not line up (a short group is one chunk): one group's whole chunks
        common = max(chunk_rows)
    block = common * max(1, BLOCK_ROWS // common)
    if block > most:
        step = min(chunk_rows)
        block = max(step, most // step * step)
    return block


class Streamed:
    """Blocks of whole chunks in a seeded order, a buffer at a time, the next read while this one trains.

    Buffers hold rows as stored (float16 by default): the reader thread only
    reads HDF5 straight into them and checks them with numpy (torch work there
    would start a second OpenMP team on the cores the GEMMs use); each batch is
    converted to float32 and its teacher rows normalised when it is drawn, with
    the same arithmetic as the in-memory path. Memory: two buffers (the one
    training, the one being read) of budget / BUFFERS bytes each. Each buffer
    has `batch_size` spare rows in front, where the previous buffer's leftover
    rows go, so nothing is copied to join them.
    """

    mode = "streaming"

    def __init__(self, selection: Selection, budget: int, device: torch.device) -> None:
        self.selection, self.device = selection, device
        row = selection.d * selection.stored[0].itemsize + selection.dt * selection.stored[1].itemsize
        rows = max(1, budget // (BUFFERS * row))  # rows a buffer may hold
        self.block = block_rows(selection.chunk_rows, rows)
        self.blocks = [(c, a, min(a + self.block, len(ok)))
                       for c, ok in enumerate(selection.ok) for a in range(0, len(ok), self.block)]
        self.per_buffer = max(1, rows // self.block)  # blocks per buffer

    def describe(self) -> dict:
        return {"mode": self.mode, "block_rows": self.block, "buffer_rows": self.per_buffer * self.block}

    def _read(self, readers: list[CacheReader], blocks: list[tuple[int, int, int]], spare: int) -> Batch:
        """The blocks' usable rows as stored, after `spare` empty rows; a NaN or inf among them is an error."""
        sel = self.selection
        rows = spare + sum(int(sel.ok[c][a:b].sum()) for c, a, b in blocks)
        buffers = (np.empty((rows, sel.d), sel.stored[0]), np.empty((rows, sel.dt), sel.stored[1]))
        at = spare
        for c, a, b in blocks:
            ok = sel.ok[c][a:b]
            for path, buffer in zip(sel.paths, buffers, strict=True):
                part = buffer[at:at + int(ok.sum())]
                if ok.all():
                    readers[c].rows_into(path, a, b, part)
                else:
                    part[:] = readers[c].rows(path, a, b)[ok]
                if not np.isfinite(part).all():
                    raise ExpclipError(f"{readers[c].path} rows {a}-{b}: non-finite features in rows marked ok")
            at += int(ok.sum())
        return torch.from_numpy(buffers[0]), torch.from_numpy(buffers[1])

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(len(self.blocks), generator=generator).tolist()
        buffers = [
            [self.blocks[i] for i in order[s : s + self.per_buffer]] for s in range(0, len(order), self.per_buffer)
        ]
        readers = [CacheReader(p) for p in self.selection.caches]  # each epoch opens (and checks) them anew
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expclip-stream")
        try:
            ahead: Future = pool.submit(self._read, readers, buffers[0], batch_size)
            left = (torch.empty(0, self.selection.d), torch.empty(0, self.selection.dt))
            for k in range(len(buffers)):
                x, e = ahead.result()
                if k + 1 < len(buffers):
                    ahead = pool.submit(self._read, readers, buffers[k + 1], batch_size)
                start = batch_size - len(left[0])  # the leftover rows go right before this buffer's
                x[start:batch_size], e[start:batch_size] = left
                x, e = x[start:].to(self.device), e[start:].to(self.device)
                perm = torch.randperm(len(x), generator=generator).to(self.device)
                usable = len(x) // batch_size * batch_size
                for s in range(0, usable, batch_size):
                    idx = perm[s:s + batch_size]
                    yield x.index_select(0, idx).float(), _normalised(e.index_select(0, idx).float())
                left = (x.index_select(0, perm[usable:]).cpu(), e.index_select(0, perm[usable:]).cpu())
                del x, e  # before the next buffer arrives: two, not three, in memory
        finally:
            pool.shutdown(wait=True)
            for r in readers:
                r.close()


def batches(selection: Selection, budget: int, device: torch.device) -> InMemory | Streamed:
    """The in-memory path when the selection fits `budget` bytes, else the stream."""
    if selection.in_memory_bytes() <= budget:
        return InMemory(selection, device)
    return Streamed(selection, budget, device)
