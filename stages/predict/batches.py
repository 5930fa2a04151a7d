"""Face crops of many pictures and frames, encoded a batch at a time: one CLIP pass per batch, not per picture.

A folder of pre-cropped faces (`--detector none`) is one face per picture; encoding
each alone would run the encoder at batch size 1, far below its rate. Crops are
transformed as they come (bounded pixels, not whole photos, wait in the queue), and
each picture's callback receives its faces' features once its batch is encoded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Batches:
    """`put(pixels, then)`: queue a picture's transformed crops; `then(features)` runs when they are encoded."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], size: int) -> None:
        self.encode, self.size = encode, size
        self.waiting: list[tuple[torch.Tensor | None, Callable[[torch.Tensor], None]]] = []
        self.queued = self.flushes = 0

    def put(self, pixels: torch.Tensor | None, then: Callable[[torch.Tensor], None]) -> None:
        """`pixels`: (n, 3, H, W) from the encoder's transform, None for a picture without faces."""
        self.waiting.append((pixels, then))
        self.queued += 0 if pixels is None else len(pixels)
        if self.queued >= self.size:
            self.flush()

    def mark(self) -> tuple[int, int]:
        return self.flushes, len(self.waiting)

    def cancel(self, mark: tuple[int, int]) -> None:
        """Drop what was queued since `mark` (a clip that failed part-way) unless a batch took it already, so
        the other inputs' batches, hence their features, are those of a run without it."""
        flushes, start = mark
        if flushes == self.flushes:
            self.queued -= sum(len(p) for p, _ in self.waiting[start:] if p is not None)
            del self.waiting[start:]

    def flush(self) -> None:
        """Encode everything queued (in batches of `size`) and hand each picture its features, in order."""
        if not self.waiting:
            return
        pixels = [p for p, _ in self.waiting if p is not None]
        features = self.encode(torch.cat(pixels)) if pixels else torch.empty(0)
        waiting, start = self.waiting, 0
        self.waiting, self.queued = [], 0
        self.flushes += 1
        for p, then in waiting:
            n = 0 if p is None else len(p)
            then(features[start : start + n])
            start += n
