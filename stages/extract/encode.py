"""Stage one's batch loop: decode the shards that some group misses, feed the loaded encoders, write shards.

Batches never cross a shard, so a resumed run feeds the encoders exactly the
batches an uninterrupted run would, and a shard is written as soon as its last
batch is encoded (on a background thread: shard_writer). A batch holds
`--batch-size` items, fewer when their pixels would pass BATCH_BYTES (clips of
many frames), and the encoder sees at most `--batch-size` frames per pass. Items that cannot be
decoded get NaN rows and their reason recorded in the shard. Rows stay on the
encoder's device until their shard is complete: no host synchronisation per
batch. The time is split into waiting for data, encoding (on a GPU: until the
queue of kernels is full, so a GPU-bound run shows here) and waiting for shard
writes, so a slow run shows its bottleneck.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.data import DataLoader

from expclip.cache.writer import Extraction, Range
from expclip.stages.encoders.base import ImageEncoder
from expclip.stages.extract.config import BATCH_BYTES, ExtractConfig
from expclip.stages.extract.loading import FaceDataset, collate
from expclip.stages.extract.shard_writer import ShardWriter
from expclip.stages.extract.sources import Source
from expclip.stages.shared.interrupts import StopRequest, ignore_in_worker
from expclip.stages.shared.progress import progress
from expclip.stages.shared.vocabulary import OFFICIAL_TRANSFORM

WAITING, ENCODING, WRITING = "waiting for data", "encoding", "writing shards"  # the summary's time split


def encode_shards(source: Source, job: Extraction, encoders: dict[str, ImageEncoder],
                  shards: dict[str, list[Range]], cfg: ExtractConfig, halt: StopRequest,
                  shown: bool = True) -> tuple[int, dict[str, float]]:
    """Encode the shards each group (path -> encoder) misses; returns the items encoded (those that could not
    be decoded are recorded as failures, not counted) and where the time went.

    `halt` is checked before and after every batch's decoding and between its
    encoder passes (Ctrl-C: the shards written so far stay; the workers cut the
    batch short); `shown`: draw the progress bar (rank 0 of a launched job only).
    """
    clock = {WAITING: 0.0, ENCODING: 0.0, WRITING: 0.0}
    todo = sorted(set().union(*(shards[path] for path in encoders)))
    if not todo:
        return 0, clock
    loader, feed, per_batch = face_loader(source, encoders, todo, cfg, halt)
    clips = source.items.frame_index is not None
    batches = iter(loader)
    encoded = 0
    with progress("clips" if clips else "faces", shown) as bar, ShardWriter(job) as writer:
        task = bar.add_task("extract", total=sum(b - a for a, b in todo))
        lap = _stopwatch(clock)
        for start, stop in todo:
            paths = [p for p in encoders if (start, stop) in shards[p]]
            parts: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
            failed: dict[int, str] = {}
            for _ in range(start, stop, per_batch):
                halt.check()
                index, tensors, reasons = next(batches)
                halt.check()  # the workers return a stopped batch at once, unfinished
                lap(WAITING)
                for path in paths:
                    parts[path].append(_encode(encoders[path], tensors[feed[path]], clips, cfg.batch_size, halt))
                failed.update({i: r for i, r in zip(index, reasons, strict=True) if r})
                bar.advance(task, len(index))
                lap(ENCODING)
            for path in paths:
                rows = torch.cat(parts[path])
                job.describe(path, encoders[path].attrs, tuple(rows.shape[1:]), cfg.store_dtype)
                writer.submit(path, start, stop, rows, failed)
            encoded += stop - start - len(failed)
            lap(WRITING)
    return encoded, clock


def face_loader(source: Source, encoders: dict[str, ImageEncoder], todo: list[Range], cfg: ExtractConfig,
                halt: StopRequest) -> tuple[DataLoader, dict[str, int], int]:
    """The data path alone: (a DataLoader of (index, tensors, reasons) batches over the `todo` ranges, group path
    -> its tensor's index, items per batch). One function, so benchmarks/decode_rate.py times what extract runs."""
    transforms, feed = _inputs(encoders, shared=cfg.transform == OFFICIAL_TRANSFORM)
    dataset = FaceDataset(source.paths, source.items, transforms, halt, source.members)
    per_batch = items_per_batch(cfg.batch_size, dataset.item_bytes)
    loader = DataLoader(
        dataset, batch_sampler=batches_of(todo, per_batch),
        num_workers=cfg.num_workers, collate_fn=collate, worker_init_fn=ignore_in_worker,
        pin_memory=any(e.device.type == "cuda" for e in encoders.values()),
    )
    return loader, feed, per_batch


def _inputs(encoders: dict[str, ImageEncoder], shared: bool) -> tuple[list[Callable], dict[str, int]]:
    """One tensor per distinct transform: (transforms, group path -> its tensor's index).

    The official transform is one tensor for every encoder; otherwise each
    encoder has its model's own preprocessing.
    """
    transforms: list[Callable] = []
    feed = {}
    for path, enc in encoders.items():
        if not (shared and transforms):
            transforms.append(enc.transform)
        feed[path] = len(transforms) - 1
    return transforms, feed


def items_per_batch(batch_size: int, item_bytes: int) -> int:
    """`batch_size` items, fewer when together they would pass BATCH_BYTES; at least one."""
    return max(1, min(batch_size, BATCH_BYTES // max(1, item_bytes)))


def batches_of(ranges: list[Range], per_batch: int) -> list[list[int]]:
    """Item indices per batch, cut within each shard."""
    return [list(range(a, min(a + per_batch, stop))) for start, stop in ranges for a in range(start, stop, per_batch)]


def _encode(encoder: ImageEncoder, pixels: torch.Tensor, clips: bool, most: int, halt: StopRequest) -> torch.Tensor:
    """(B, ...) pixels -> (B, D) rows, or (B, T, D) for clips, on the device: at most `most` frames per
    encoder pass (the GPU's memory and a stop request wait for one pass, not for the whole batch)."""
    frames = pixels.flatten(0, 1) if clips else pixels
    parts = []
    for a in range(0, len(frames), most):
        halt.check()
        parts.append(encoder.encode_images(frames[a:a + most].to(encoder.device, non_blocking=True)))
    return torch.cat(parts).reshape(len(pixels), *(pixels.shape[1:2] if clips else ()), -1).float()


def _stopwatch(clock: dict[str, float]) -> Callable[[str], None]:
    """`lap(what)` adds the time since the previous lap to clock[what]."""
    last = [time.perf_counter()]

    def lap(what: str) -> None:
        now = time.perf_counter()
        clock[what] += now - last[0]
        last[0] = now

    return lap
