"""What `expclip extract` can be told; each default, help line and choice list is stated here once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.base.settings import check_choices, option_name, setting
from expclip.stages.shared import common_settings, protocol
from expclip.stages.shared.vocabulary import (
    AUTO,
    BATCH_SIZES,
    COMPILE,
    DEFAULT_CLIP,
    EXTRACT_PRECISIONS,
    MODEL_TRANSFORM,
    TRANSFORMS,
    WEIGHTS,
)

STORE_DTYPES = ("float16", "float32")
# Pixels one batch holds at most, after the transforms: long clips come fewer to a batch, so memory stays
# bounded whatever the frames per clip (the DataLoader keeps a few batches per worker in flight).
BATCH_BYTES = 2**28


def default_workers() -> int:
    """DataLoader workers decoding images: the cores shared among this machine's ranks, at most 8 each
    (more only thrash); torchrun tells each rank how many share the machine."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // max(1, ranks)))


@dataclass
class ExtractConfig:
    """Everything stage one can be told; the defaults reproduce the paper's encoders."""

    clip_model: str = setting(DEFAULT_CLIP, "open_clip model name, local-dir:PATH, or hf-hub:ORG/REPO (a hub repo).")
    clip_pretrained: str | None = setting(
        None, "Pretrained tag or weights file (default: openai where the model has it, else its only tag)."
    )
    teacher: str | None = setting(
        protocol.DEFAULT_TEACHER,
        "Teacher: HF id or save_pretrained folder (BLIP-2 Flan-T5 or OPT, InstructBLIP Flan-T5); without one: "
        "--no-teacher (evaluation caches need none).",
    )
    instruction: str = setting(protocol.DEFAULT_INSTRUCTION, "Teacher instruction (default: the paper's).")
    transform: str = setting(
        MODEL_TRANSFORM,
        "Each model's own preprocessing, or the official code's one tensor for both.",
        choices=TRANSFORMS,
    )
    batch_size: int | None = setting(
        None,
        "Images per encoder pass, and images or clips per decoded batch, fewer when a batch would pass 256 MiB "
        "of pixels (default: 256 on a GPU, 64 on the CPU).",
    )
    num_workers: int = setting(
        default_workers(),
        "DataLoader workers decoding images "
        "(default: one per core, shared among the ranks on this machine, at most 8).",
    )
    device: str = common_settings.device()
    precision: str = setting(
        AUTO,
        "auto = bf16 autocast on CUDA, fp32 on the CPU; fp8 = float8 products in the large linear layers "
        "(GPUs of compute capability >= 8.9, needs torchao: pip install 'expclip[fp8]'), recorded as its own "
        "precision.",
        choices=(AUTO, *EXTRACT_PRECISIONS),
    )
    clip_weights: str = setting(
        "float32",
        "CLIP's weights under bf16: float32 (cast by autocast on every pass) or bfloat16 (cast once; LayerNorms "
        "stay float32), recorded as precision bfloat16-weights. Needs --precision bf16.",
        choices=WEIGHTS,
    )
    compile: str = setting(
        AUTO,
        "torch.compile each tower for one batch shape (CUDA only; compiled code kept in TORCHINDUCTOR_CACHE_DIR, "
        "default ~/.cache/expclip/inductor). auto = off until a GPU measurement shows it pays at the paper's "
        "48,640 faces including compile time.",
        choices=COMPILE,
    )
    store_dtype: str = setting("float16", "Feature dtype on disk.", choices=STORE_DTYPES)
    prompts: Path | None = setting(None, "JSON file of extra prompt sets.")
    shard_size: int = setting(1024, "Rows per resumable shard.")
    part: str | None = setting(
        None,
        "K/N: encode only the shards whose index % N is K-1, without merging (job arrays); "
        "then run without --part to merge.",
    )

    def check(self) -> None:
        """Refuse values outside their choices or ranges, naming the option."""
        check_choices(self)
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ExpclipError(f"{option_name(name)}: must be at least 1")
        self.part_of()

    def batch_for(self, device_type: str) -> int:
        """The batch size asked for, else the default for the device: GPUs (CUDA, MPS) need large batches to be
        busy."""
        return self.batch_size or BATCH_SIZES.get(device_type, BATCH_SIZES["cuda"])

    def part_of(self) -> tuple[int, int] | None:
        """`--part K/N` as (K, N), or None for a run that merges."""
        if self.part is None:
            return None
        k, _, n = self.part.partition("/")
        if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
            raise ExpclipError(f"--part {self.part!r}: write K/N with 1 <= K <= N, e.g. --part 1/4")
        return int(k), int(n)
