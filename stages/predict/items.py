"""What `ZeroShotFER.predict` takes: one item or a list of paths, PIL images and numpy arrays, as people pass them.

A str or Path is one picture file (never iterated character by character); a
numpy array is `H×W×3 uint8` RGB pixels, BGR with `bgr=True` (OpenCV's frames,
as deepface and fer take them), or `H×W uint8` grayscale, replicated into the
three channels CLIP reads. Anything else is one ExpclipError naming the entry,
before any picture is read, so a bad entry late in a long list costs no work.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from expclip.base.errors import ExpclipError
from expclip.stages.predict.media import picture

Item = Union[str, Path, Image.Image, np.ndarray]
WANTED = "give paths, PIL images or uint8 numpy arrays (H×W×3 RGB, bgr=True for OpenCV's BGR; H×W grayscale)"


def items(given: object) -> list[Item]:
    """`predict`'s input as a list of items, each checked, or one line saying which entry is not one."""
    if isinstance(given, (str, Path, Image.Image, np.ndarray)):
        _check(given, "images")
        return [given]
    if not isinstance(given, Iterable):
        raise ExpclipError(f"images: got {type(given).__name__}; {WANTED}")
    found = list(given)
    for n, item in enumerate(found):
        _check(item, f"images[{n}]")
    return found


def _check(item: object, where: str) -> None:
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ExpclipError(f"{where}: a numpy array of {item.dtype}; {WANTED}")
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)):
            shape = "×".join(map(str, item.shape))
            more = " (a stack of pictures: pass list(array))" if item.ndim == 4 else ""
            raise ExpclipError(f"{where}: a numpy array of shape {shape}{more}; {WANTED}")
    elif not isinstance(item, (str, Path, Image.Image)):
        raise ExpclipError(f"{where}: got {type(item).__name__}; {WANTED}")


def as_picture(item: Item, *, bgr: bool = False) -> Image.Image:
    """The item as an RGB picture: a file decoded as extract decodes it (media.picture), an array's pixels as given
    (channels reversed when `bgr`; a grayscale array replicated)."""
    if isinstance(item, (str, Path)):
        return picture(Path(item))
    if isinstance(item, np.ndarray):
        pixels = item[..., ::-1] if bgr and item.ndim == 3 else item
        return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    return item
