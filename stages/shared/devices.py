"""Which torch device a stage runs on: one rule for `--device auto|cpu|cuda` everywhere."""

from __future__ import annotations

import torch

from expclip.base.errors import ExpclipError
from expclip.stages.shared.memory import available_bytes
from expclip.stages.shared.vocabulary import DEVICES


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU; asking for a missing CUDA is an error."""
    if name not in DEVICES:
        raise ExpclipError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ExpclipError("--device cuda: no CUDA device is available here")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def free_bytes(device: torch.device) -> int:
    """Memory free on `device` now: the GPU's (cudaMemGetInfo), or the RAM the system can give."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_bytes()
