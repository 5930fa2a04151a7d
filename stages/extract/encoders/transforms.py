"""Image transforms shared by both encoders.

The official Exp-CLIP code feeds one tensor, resized to 224x224 and not
normalised, to CLIP and to BLIP-2 alike; `official_transform` reproduces it so
both encoders (and the Dataset, which decodes an image once per distinct
transform) agree on what "exp-clip-official" means.
"""

from __future__ import annotations

from torchvision import transforms as T

from expclip.base.errors import ExpclipError
from expclip.stages.shared.vocabulary import TRANSFORMS


def official_transform() -> T.Compose:
    """Resize((224, 224)) + ToTensor(): values in [0, 1], no mean/std normalisation."""
    return T.Compose([T.Resize((224, 224)), T.ToTensor()])


def check_transform(transform: str) -> None:
    """Refuse a transform name that is neither the model's own nor the official one."""
    if transform not in TRANSFORMS:
        raise ExpclipError(f"unknown transform {transform!r}; choose one of: {', '.join(TRANSFORMS)}")
