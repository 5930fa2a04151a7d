"""Numeric precision of encoding: float32, or bfloat16 autocast on the encoding device."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from expclip.errors import ExpclipError

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> None:
    """Refuse a precision other than float32 or bfloat16."""
    if precision not in PRECISIONS:
        raise ExpclipError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on the encoding device when asked for, so the recorded `precision` is true."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
