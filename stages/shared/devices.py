"""Which torch device a stage runs on: one rule for every `--device` (the forms in vocabulary.DEVICES).

A device that is named but absent (CUDA on a machine without it, `cuda:3` on a
two-GPU machine, MPS outside Apple's GPUs) is refused in one line before any
work, rather than failing later inside torch with a page of traceback.
"""

from __future__ import annotations

import torch

from expclip.base.errors import ExpclipError
from expclip.stages.shared.memory import available_bytes
from expclip.stages.shared.vocabulary import AUTO, DEVICE, DEVICES


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU; `cuda`, `cuda:N` and `mps` must exist here. The forms are
    vocabulary.DEVICE's, the pattern the option's check matches."""
    form = DEVICE.fullmatch(name)
    if form is None:
        raise ExpclipError(f"--device {name!r}: choose one of {', '.join(DEVICES)} (N: a CUDA device index)")
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _has_mps():
            raise ExpclipError("--device mps: this torch sees no MPS (Apple GPU) device here")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ExpclipError(f"--device {name}: no CUDA device is available here")
    count = torch.cuda.device_count()
    if form["index"] is not None and int(form["index"]) >= count:
        raise ExpclipError(f"--device {name}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                           f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return torch.device(name)


def _has_mps() -> bool:
    """Whether this torch was built with MPS and the machine has an Apple GPU for it."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def free_bytes(device: torch.device) -> int:
    """Memory free on `device` now: the GPU's (cudaMemGetInfo), or the RAM the system can give."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_bytes()
