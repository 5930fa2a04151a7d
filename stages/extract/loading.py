"""Decoding and preprocessing in DataLoader workers, with bad files recorded, not raised.

A file that cannot be decoded yields a zero tensor plus a reason; the extract
stage turns its rows into NaN and the reason into the cache's /failures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from expclip.cache.format import Items
from expclip.stages.extract.sources import IMAGE_SUFFIXES

Transform = Callable[[Image.Image], torch.Tensor]


class DecodeError(Exception):
    """Why one image could not be used; recorded in the cache, never fatal."""


def load_image(path: Path) -> Image.Image:
    """Decode fully (so truncation is found here), as RGB."""
    try:
        if path.stat().st_size == 0:
            raise DecodeError("zero-byte file")
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise DecodeError("missing file") from None
    except PermissionError:
        raise DecodeError("unreadable (permission denied)") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError(f"truncated or corrupt image ({e})") from None


def clip_frames(folder: Path, frame_index: list[int]) -> list[Path]:
    """The sampled frame files of a clip: its folder's image files in sorted order."""
    if not folder.is_dir():
        raise DecodeError("missing clip folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DecodeError("clip folder has no image files")
    if max(frame_index) >= len(files):
        raise DecodeError(f"clip folder has {len(files)} frames, the list says more (needs frame {max(frame_index)})")
    return [files[i] for i in frame_index]


class FaceDataset(Dataset):
    """Item i → (i, one tensor per transform, reason); clips give (T, 3, H, W) tensors."""

    def __init__(self, paths: list[Path], items: Items, transforms: list[Transform]):
        self.paths, self.items, self.transforms = paths, items, transforms
        blank = Image.new("RGB", (32, 32))
        self.shapes = [tuple(t(blank).shape) for t in transforms]

    def __len__(self) -> int:
        return len(self.paths)

    def _frames(self, i: int) -> list[Path]:
        if self.items.frame_index is None:
            return [self.paths[i]]
        return clip_frames(self.paths[i], self.items.frame_index[i].tolist())

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor], str]:
        clip = self.items.frame_index is not None
        try:
            images = [load_image(p) for p in self._frames(i)]
            out = [torch.stack([t(im) for im in images]) for t in self.transforms]
            return i, [x if clip else x[0] for x in out], ""
        except DecodeError as e:
            t = self.items.frame_index.shape[1] if clip else None
            zeros = [torch.zeros((t, *s) if clip else s) for s in self.shapes]
            return i, zeros, str(e)


def collate(batch: list[tuple[int, list[torch.Tensor], str]]) -> tuple[list[int], list[torch.Tensor], list[str]]:
    index = [b[0] for b in batch]
    tensors = [torch.stack([b[1][k] for b in batch]) for k in range(len(batch[0][1]))]
    return index, tensors, [b[2] for b in batch]
