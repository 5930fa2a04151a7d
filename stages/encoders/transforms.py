"""Image transforms shared by both encoders.

The official Exp-CLIP code feeds one tensor, resized to 224x224 and not
normalised, to CLIP and to BLIP-2 alike; `official_transform` reproduces it so
both encoders (and the Dataset, which decodes an image once per distinct
transform) agree on what "exp-clip-official" means.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms as T

from expclip.base.errors import ExpclipError
from expclip.stages.shared.vocabulary import TRANSFORMS


def official_transform() -> T.Compose:
    """Resize((224, 224)) + ToTensor(): values in [0, 1], no mean/std normalisation."""
    return T.Compose([T.Resize((224, 224)), T.ToTensor()])


def check_transform(transform: str) -> None:
    """The encoders' guard for Python callers (the CLI and configs check first): an unknown name would
    otherwise silently take the model's own transform."""
    if transform not in TRANSFORMS:
        raise ExpclipError(f"unknown transform {transform!r}; choose one of: {', '.join(TRANSFORMS)}")


class OnDevice:
    """The float steps of an image pipeline, run by the encoder on its own device.

    DataLoader workers then ship uint8 pixels (4x less to pin and copy than
    float32) and the GPU does ToTensor's `x / 255` and Normalize's
    `(x - mean) / std` with the very same float32 arithmetic, so features do not
    change. Tensors that are not uint8 (a pipeline that could not be split) pass
    through unchanged.
    """

    def __init__(self, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> None:
        self.mean, self.std = mean, std

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            return pixels
        x = pixels.to(torch.float32).div(255)
        if self.mean is None:
            return x
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub(mean).div(std)


def split_on_device(pipeline: Callable) -> tuple[Callable, OnDevice]:
    """(PIL -> uint8 tensor, its float steps) for a torchvision pipeline ending in ToTensor [+ Normalize];
    any other pipeline is kept whole, with nothing left for the device."""
    steps = list(getattr(pipeline, "transforms", []))
    norm = steps.pop() if steps and isinstance(steps[-1], T.Normalize) else None
    if not steps or not isinstance(steps[-1], T.ToTensor):
        return pipeline, OnDevice()
    on_device = OnDevice(tuple(norm.mean), tuple(norm.std)) if norm is not None else OnDevice()
    return T.Compose([*steps[:-1], T.PILToTensor()]), on_device
