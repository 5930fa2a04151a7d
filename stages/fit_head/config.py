"""What fit-head can be told; each default, help line and choice list is stated here once (data only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from expclip.base.errors import ExpclipError
from expclip.base.settings import finite_number, integer, option_name, setting
from expclip.base.settings import value_problem as choice_problem
from expclip.stages.shared import common_settings
from expclip.stages.shared.memory import available_bytes, parse_size
from expclip.stages.shared.vocabulary import FIT_PRECISIONS, HEAD_KINDS

OPTIMIZERS = ("sgd", "adamw")
LEARNABLE = "learnable"
SEEDS = 2**64  # torch's generators take seeds 0 .. 2**64 - 1


# The numeric fields' ranges: (is the value in range, what it must be).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: finite_number(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: finite_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: finite_number(v) and v >= 0, "a finite number >= 0"),
    "gamma": (lambda v: finite_number(v) and v > 0, "a finite number > 0"),
    "batch_size": (lambda v: integer(v) and v >= 2, "an integer >= 2"),
    "epochs": (lambda v: integer(v) and v >= 1, "an integer >= 1"),
    "seed": (lambda v: integer(v) and 0 <= v < SEEDS, "an integer from 0 to 2**64 - 1"),
    "milestones": (lambda v: all(integer(m) and m > 0 for m in v) and list(v) == sorted(set(v)),
                   "epochs > 0 in increasing order"),
    "logit_scale": (lambda v: v is None or v == LEARNABLE or (finite_number(v) and v > 0),
                    f"a finite number > 0 or '{LEARNABLE}'"),
}


def _milestones(text: str) -> tuple[int, ...]:
    """--milestones' comma list, e.g. "10,20" (their order is check()'s rule)."""
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise ExpclipError(f"--milestones: {text!r} is not a comma list of epochs") from None


def _logit_scale(text: str) -> float | str:
    """--logit-scale: a number or the word; whether the number is > 0 is check()'s rule."""
    if text == LEARNABLE:
        return text
    try:
        return float(text)
    except ValueError:
        raise ExpclipError(f"--logit-scale: {text!r} is neither a number nor '{LEARNABLE}'") from None


@dataclass
class FitConfig:
    """Hyper-parameters of a fit; the defaults reproduce the official Exp-CLIP training run."""

    lr: float = setting(1e-3, "Learning rate (official: 1e-3).")
    momentum: float = setting(0.9, "SGD momentum (official: 0.9; AdamW ignores it).")
    weight_decay: float = setting(1e-4, "Weight decay (official: 1e-4).")
    batch_size: int = setting(512, "Pairs per step, drop_last (official: 512).")
    epochs: int = setting(5, "Epochs (official: 5).")
    milestones: tuple[int, ...] = setting(
        (30,), "Epochs where MultiStepLR multiplies lr by gamma (official: 30). Comma list.", parse=_milestones
    )
    gamma: float = setting(0.1, "MultiStepLR factor.")
    seed: int = setting(0, "Seeds the head's init and the shuffling.")
    optimizer: str = setting("sgd", "sgd is the official optimizer.", choices=OPTIMIZERS)
    head: str = setting("linear", "linear is the paper's head; mlp adds one hidden layer.", choices=HEAD_KINDS)
    logit_scale: float | str | None = setting(
        None, f"A number, or '{LEARNABLE}' (default: the cache's CLIP logit_scale, frozen).", parse=_logit_scale
    )
    init_from: Path | None = setting(None, "Start from this HEAD (stem, .safetensors, .json or official .pth).")
    device: str = common_settings.device()
    precision: str = setting(
        "fp32",
        "fp32 (exact); bf16 matrix products (the paper's head: its hand-written gradient's four; "
        "other heads: autocast); or tf32 (CUDA only: float32 products on tensor cores).",
        choices=FIT_PRECISIONS,
    )
    max_memory: str | None = setting(
        None,
        "Memory for the training features, e.g. 1GB or 512MB (default: half of what the training device has "
        "free: RAM, or the GPU's memory); larger selections are streamed from the cache.",
    )

    def check(self) -> None:
        """Refuse options that cannot work, naming the option: the CLI, the API and ablate's grids all come
        here before any work (NaN or inf would train an all-NaN head; HEAD.json could not even record it)."""
        for f in fields(self):
            problem = value_problem(f.name, getattr(self, f.name))
            if problem:
                raise ExpclipError(f"{option_name(f.name)}: {problem}")
        self.memory_budget()

    def memory_budget(self, free: int | None = None) -> int:
        """Bytes the training features may take: --max-memory, else half of `free` (default: the RAM available)."""
        if self.max_memory is not None:
            return parse_size(self.max_memory, "--max-memory")
        return (available_bytes() if free is None else free) // 2


def value_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for FitConfig's field `name` (outside its choices or its range), else None."""
    outside = choice_problem({f.name: f for f in fields(FitConfig)}[name], value)
    if outside:
        return outside
    ok, wanted = RANGES.get(name, (lambda v: True, ""))
    return None if ok(value) else f"{value!r} is not {wanted}"
