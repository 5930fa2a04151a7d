"""Which torch device a stage runs on: one rule for `--device auto|cpu|cuda` everywhere."""

from __future__ import annotations

import torch

from expclip.base.errors import ExpclipError
from expclip.stages.shared.memory import available_bytes
from expclip.stages.shared.vocabulary import AUTO


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU; asking for a missing CUDA is an error.

    The choice itself is checked where the value comes in (a config's check(), the CLI's parse); a name that
    reached here unchecked and that torch does not know is still one error, not torch's traceback.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ExpclipError("--device cuda: no CUDA device is available here")
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ExpclipError(f"--device {name!r}: not a device torch knows") from None


def free_bytes(device: torch.device) -> int:
    """Memory free on `device` now: the GPU's (cudaMemGetInfo), or the RAM the system can give."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_bytes()
