"""The seam between the extraction loop and its encoders.

The loop needs only what `ImageEncoder` names (a transform for the DataLoader
workers, a device, a cache key, attributes to record, the row width, `encode_images`), so a
new CLIP or teacher family plugs in without touching it. `TeacherSpec` is what
the teacher front door (teacher.py) decides from the options and the
checkpoint's config before any weights are read; a family's loader gets it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import PIL.Image
import torch

from expclip.base.errors import ExpclipError
from expclip.stages.shared.precision import recorded_name


@runtime_checkable
class ImageEncoder(Protocol):
    """A frozen model that turns transformed images into one float32 row each, with its provenance."""

    transform: Callable[[PIL.Image.Image], torch.Tensor]
    device: torch.device
    key: str
    attrs: dict

    @property
    def width(self) -> int:
        """D, the length of one feature row (known before encoding: the run checks the disk first)."""
        ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels from `transform` -> (B, D) float32 features on the encoder's device
        (left there: the loop copies a whole shard to the host at once, not every batch)."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """A CLIP text tower: prompts to raw features (the CLIP encoder is both an ImageEncoder and this)."""

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """K prompts -> (K, D) float32 features on the CPU."""
        ...


@runtime_checkable
class Teacher(ImageEncoder, Protocol):
    """An image encoder whose features also depend on an instruction, stored under its own key."""

    instruction_key: str


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as the options and the checkpoint's config define it, known without loading weights."""

    family: str
    source: str  # HF id as given, or an absolute folder
    instruction: str
    transform: str
    precision: str  # short name: fp32 / bf16
    key: str
    instruction_key: str

    @property
    def config(self) -> dict:
        """The configuration a cache compares before reusing a group (docs/cache-format.md)."""
        return {"family": self.family, "model": self.source, "instruction": self.instruction,
                "transform": self.transform, "precision": recorded_name(self.precision)}


def load_error(what: str, source: str, error: Exception) -> ExpclipError:
    """A checkpoint that cannot be read, named, with the offline hint that explains most such failures."""
    offline = " (HF_HUB_OFFLINE is set: only folders and cached ids load)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return ExpclipError(f"cannot load {what} {source!r}{offline}: {error}")
