"""Finished shards written on one background thread, so the encoders never wait for HDF5 or fsync.

A shard's rows arrive as tensors on the encoder's device; their copy to the
host is started at once (non-blocking into pinned memory on CUDA, so the GPU
is not synchronised per batch or per shard) and awaited by the writer thread,
which then writes the shard file atomically. At most `depth` shards wait; a
failed write (a full disk) is raised in the loop's thread at its next
`submit` or at `close`. Leaving the `with` block always waits for the shards
already handed over, so an interrupted run keeps every shard it finished.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from expclip.cache.writer import Extraction

DEPTH = 2  # shards waiting to be written; more only holds more rows in memory


class ShardWriter:
    def __init__(self, job: Extraction, depth: int = DEPTH) -> None:
        self.job, self.depth = job, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expclip-shards")
        self.pending: list[Future] = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        self.close(raising=kind is None)

    def submit(self, path: str, start: int, stop: int, rows: torch.Tensor, failed: dict[int, str]) -> None:
        """Queue rows [start, stop) of a described group; item rows in `failed` are written as NaN."""
        while len(self.pending) >= self.depth or any(f.done() for f in self.pending):
            self.pending.pop(0).result()  # waits for the oldest; raises its error here
        host = rows.to("cpu", non_blocking=True)
        copied = None
        if rows.is_cuda:
            copied = torch.cuda.Event()
            copied.record()
        self.pending.append(self.pool.submit(self._write, path, start, stop, host, copied, dict(failed)))

    def _write(self, path: str, start: int, stop: int, host: torch.Tensor, copied: torch.cuda.Event | None,
               failed: dict[int, str]) -> None:
        if copied is not None:
            copied.synchronize()
        array = host.numpy()
        array[[i - start for i in failed]] = np.nan
        self.job.write_shard(path, start, stop, array, failed)

    def close(self, raising: bool = True) -> None:
        """Wait for every queued shard; re-raise the first failure unless another error is already on its way."""
        try:
            for future in self.pending:
                error = future.exception()
                if error is not None and raising:
                    raise error
        finally:
            self.pending.clear()
            self.pool.shutdown(wait=True)
