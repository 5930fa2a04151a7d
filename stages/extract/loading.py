"""Decoding and preprocessing in DataLoader workers, with bad files recorded, not raised.

Each image is decoded by `stages.encoders.images.load_image` (one rule for what
a file looks like, whether a file or a tar shard's member holds it). A file that
cannot be decoded yields a zero tensor plus a reason; the extract stage turns
its rows into NaN and the reason into the cache's /failures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from expclip.cache.format import Items
from expclip.stages.encoders.images import DecodeError, clip_frames, load_image
from expclip.stages.extract.shards import Member
from expclip.stages.shared.interrupts import StopRequest

Transform = Callable[[Image.Image], torch.Tensor]
STOPPED = "not decoded: the run was stopped"  # never recorded: the batch loop stops before using the batch


class FaceDataset(Dataset):
    """Item i → (i, one tensor per transform, reason); clips give (T, 3, H, W) tensors.

    A clip's frames are decoded one at a time (only one decoded picture is held),
    and `halt.requested()` is read before each: after Ctrl-C or SIGTERM the rest
    of the batch is returned as STOPPED items at once, which the batch loop
    discards when it stops.
    """

    def __init__(self, paths: list[Path], items: Items, transforms: list[Transform], halt: StopRequest | None = None,
                 members: list[Member] | None = None):
        """`members`: where each item's image lies in its tar shard (`paths`), for a source of shards."""
        self.paths, self.items, self.transforms, self.halt = paths, items, transforms, halt
        self.members = members
        blank = Image.new("RGB", (32, 32))
        self.blanks = [t(blank) for t in transforms]  # shape and dtype of what a failed item stands in with

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def item_bytes(self) -> int:
        """Bytes of one item's tensors (every frame of a clip, every transform): what a batch holds per item."""
        frames = 1 if self.items.frame_index is None else self.items.frame_index.shape[1]
        return frames * sum(b.numel() * b.element_size() for b in self.blanks)

    def _frames(self, i: int) -> list[Path | Member]:
        if self.members is not None:
            return [self.members[i]]
        if self.items.frame_index is None:
            return [self.paths[i]]
        return clip_frames(self.paths[i], self.items.frame_index[i].tolist())

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor], str]:
        clip = self.items.frame_index is not None
        try:
            out: list[list[torch.Tensor]] = [[] for _ in self.transforms]
            for path in self._frames(i):
                if self.halt is not None and self.halt.requested():
                    raise DecodeError(STOPPED)
                image = load_image(path.read() if isinstance(path, Member) else path)
                for frames, t in zip(out, self.transforms):
                    frames.append(t(image))
            return i, [torch.stack(x) if clip else x[0] for x in out], ""
        except DecodeError as e:
            t = self.items.frame_index.shape[1] if clip else None
            zeros = [torch.zeros((t, *b.shape) if clip else b.shape, dtype=b.dtype) for b in self.blanks]
            return i, zeros, str(e)


def collate(batch: list[tuple[int, list[torch.Tensor], str]]) -> tuple[list[int], list[torch.Tensor], list[str]]:
    """Indices, one stacked tensor per transform, and the decode errors. torch's `default_collate` stacks: in a
    DataLoader worker it stacks straight into shared memory, so a batch reaches the main process without the
    second copy a plain `torch.stack` would need on the way."""
    index = [b[0] for b in batch]
    tensors = [default_collate([b[1][k] for b in batch]) for k in range(len(batch[0][1]))]
    return index, tensors, [b[2] for b in batch]
