"""torch.compile of an encoder's towers for one batch shape, the last batch padded to it.

A compiled tower is specialised to its input shape: a short last batch would
compile again (tens of seconds for a large model), so every pass is padded with
zero rows to the batch size and the padded rows dropped (each row is computed
alone: no batch statistics in eval mode). Inductor's compiled code is kept in
TORCHINDUCTOR_CACHE_DIR (the user's cache folder unless set), so a later run
reuses it. Compiling happens on a warm-up pass at load time, whose duration is
reported as the compile time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from expclip.stages.encoders.base import ImageEncoder
from expclip.stages.encoders.towers import towers

Compile = Callable[[torch.nn.Module], None]


def inductor_cache() -> Path:
    """Where inductor keeps compiled code: TORCHINDUCTOR_CACHE_DIR if set, else expclip's folder in the user's
    cache (XDG_CACHE_HOME or ~/.cache), set for this process."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "expclip" / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def static_compile(tower: torch.nn.Module) -> None:
    """Compile `tower` in place (its parameters keep their names) for static shapes."""
    tower.compile(dynamic=False)


class StaticBatch:
    """An encoder whose passes all have `batch_size` rows: shorter ones are padded, the padding dropped."""

    def __init__(self, encoder: ImageEncoder, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, batch_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """As the encoder's, with at most `batch_size` rows per call."""
        n = len(pixels)
        if n > self.batch_size:
            raise ValueError(f"{n} rows in one pass of a tower compiled for {self.batch_size}")
        if n < self.batch_size:
            pixels = torch.cat([pixels, pixels.new_zeros((self.batch_size - n, *pixels.shape[1:]))])
        return self.encoder.encode_images(pixels)[:n]


def compile_encoder(encoder: ImageEncoder, batch_size: int, compile_fn: Compile = static_compile
                    ) -> tuple[StaticBatch, float]:
    """(the encoder with its towers compiled, seconds of the warm-up pass that compiles them)."""
    inductor_cache()
    for tower in towers(encoder).values():
        compile_fn(tower)
    static = StaticBatch(encoder, batch_size)
    blank = encoder.transform(PIL.Image.new("RGB", (32, 32)))
    started = time.perf_counter()
    static.encode_images(blank.unsqueeze(0).expand(batch_size, *blank.shape).contiguous())
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)
    return static, time.perf_counter() - started
