"""One precision vocabulary for every stage: `fp32`, or `bf16` autocast on the device that computes.

Options and configurations use the short names; caches record the torch dtype
name (`float32` / `bfloat16`, docs/cache-format.md), so files written before
read the same. fit-head also offers `tf32`: float32 tensors whose matrix
products CUDA's tensor cores compute with 10-bit mantissas (`tensor_cores`);
extract also offers `fp8` (stages/shared/fp8.py): bf16 tensors whose large
linear layers multiply in float8, recorded as `float8_e4m3fn` so its caches
never count as bf16 ones.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Iterator

import torch

from expclip.base.errors import ExpclipError
from expclip.stages.shared.vocabulary import AUTO, EXTRACT_PRECISIONS, FIT_PRECISIONS, FP8, TF32

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, TF32: torch.float32, FP8: torch.bfloat16}
FP8_RECORDED = "float8_e4m3fn"  # torchao's float8 format for weights and activations
BF16_WEIGHTS = "bfloat16-weights"  # the recorded precision of CLIP features made with bf16 weights


def check_precision(precision: str, offered: tuple[str, ...] = EXTRACT_PRECISIONS) -> None:
    """Refuse a name outside the vocabulary, listing it."""
    if precision not in offered:
        raise ExpclipError(f"unknown precision {precision!r}; choose one of: {', '.join(offered)}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 on CUDA and fp32 on the CPU (exact there, and faster without native bf16)."""
    if precision == AUTO:
        return "bf16" if device.type == "cuda" else "fp32"
    check_precision(precision)
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype tensors (and matrix-product inputs) take: tf32 keeps float32 tensors, fp8 keeps bf16 ones (only
    its large linear layers' products run in float8)."""
    check_precision(precision, (*FIT_PRECISIONS, FP8))
    return _DTYPES[precision]


@contextmanager
def tensor_cores(precision: str, device: torch.device) -> Iterator[None]:
    """For `tf32`, let CUDA multiply float32 matrices in TF32 while inside, then restore the setting.

    TF32 is a CUDA feature: asking for it elsewhere is refused rather than
    silently running fp32 under a name that says otherwise.
    """
    if precision != TF32:
        yield
        return
    if device.type != "cuda":
        raise ExpclipError(f"--precision {TF32}: TensorFloat-32 products are a CUDA feature; "
                           f"on the {device.type.upper()} use fp32 (exact) or bf16")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def recorded_name(precision: str) -> str:
    """How a cache records the precision of its features: the torch dtype name (fp8: the float8 one)."""
    if precision == FP8:
        return FP8_RECORDED
    return str(torch_dtype(precision)).removeprefix("torch.")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on `device` when asked for, so the recorded precision is true; else nothing."""
    if torch_dtype(precision) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices natively: CUDA, or a CPU with avx512_bf16 or AMX.

    Without it (e.g. AVX2-only CPUs) bf16 matrix products are emulated, so they
    run several times slower than the fp32 ones they were meant to speed up.
    """
    if device.type != "cpu":
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def query_precision(recorded: str) -> str:
    """The autocast precision that encodes a few queries into the space of features recorded as `recorded`:
    bf16 weights and fp8 products sit nearest bf16 autocast, which every device runs (fp8 needs a recent GPU)."""
    return {"bfloat16": "bf16", BF16_WEIGHTS: "bf16", FP8_RECORDED: "bf16"}.get(recorded, "fp32")
