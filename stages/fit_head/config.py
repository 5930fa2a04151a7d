"""What fit-head can be told; each default, help line and choice list is stated here once (data only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.base.settings import check_choices, setting
from expclip.stages.shared.memory import available_bytes, parse_size
from expclip.stages.shared.vocabulary import DEVICES, FIT_PRECISIONS, HEAD_KINDS

OPTIMIZERS = ("sgd", "adamw")
LEARNABLE = "learnable"


@dataclass
class FitConfig:
    """Hyper-parameters of a fit; the defaults reproduce the official Exp-CLIP training run."""

    lr: float = setting(1e-3, "Learning rate (official: 1e-3).")
    momentum: float = setting(0.9, "SGD momentum (official: 0.9; AdamW ignores it).")
    weight_decay: float = setting(1e-4, "Weight decay (official: 1e-4).")
    batch_size: int = setting(512, "Pairs per step, drop_last (official: 512).")
    epochs: int = setting(5, "Epochs (official: 5).")
    milestones: tuple[int, ...] = setting((30,), "Epochs where MultiStepLR multiplies lr by gamma (official: 30).")
    gamma: float = setting(0.1, "MultiStepLR factor.")
    seed: int = setting(0, "Seeds the head's init and the shuffling.")
    optimizer: str = setting("sgd", "sgd is the official optimizer.", choices=OPTIMIZERS)
    head: str = setting("linear", "linear is the paper's head; mlp adds one hidden layer.", choices=HEAD_KINDS)
    logit_scale: float | str | None = setting(None, f"A number, or '{LEARNABLE}' (default: the cache's CLIP logit_scale, frozen).")
    init_from: Path | None = setting(None, "Start from this HEAD (stem, .safetensors, .json or official .pth).")
    device: str = setting("auto", "auto = CUDA when there is one, else the CPU.", choices=DEVICES)
    precision: str = setting("fp32", "fp32 (exact); bf16 matrix products (the paper's head: its hand-written gradient's four; other heads: autocast); or tf32 (CUDA only: float32 products on tensor cores).", choices=FIT_PRECISIONS)
    max_memory: str | None = setting(None, "Memory for the training features, e.g. 1GB or 512MB (default: half of what the training device has free: RAM, or the GPU's memory); larger selections are streamed from the cache.")

    def check(self) -> None:
        """Refuse options that cannot work, naming the option."""
        check_choices(self)
        if self.batch_size < 2 or self.epochs < 1 or self.lr <= 0:
            raise ExpclipError("--batch-size must be >= 2, --epochs >= 1 and --lr > 0")
        self.memory_budget()
        scale = self.logit_scale
        if (isinstance(scale, str) and scale != LEARNABLE) or (isinstance(scale, (int, float)) and not scale > 0):
            raise ExpclipError(f"--logit-scale: {scale!r} is neither a positive number nor '{LEARNABLE}'")

    def memory_budget(self, free: int | None = None) -> int:
        """Bytes the training features may take: --max-memory, else half of `free` (default: the RAM available)."""
        if self.max_memory is not None:
            return parse_size(self.max_memory, "--max-memory")
        return (available_bytes() if free is None else free) // 2
