"""Image decoding shared by stage one, predict and search queries: one rule for what a file looks like.

`load_image` is the one place images are decoded. It returns 8-bit RGB as a
person sees the file in a viewer, so that the encoders see that image too:

- **Orientation.** The EXIF orientation (all eight values) is applied first,
  so a phone photo stored sideways is encoded upright.
- **Integer images deeper than 8 bits keep their high byte**: value >> (bits - 8),
  where bits is the sample depth — 16 for Pillow's I;16 modes (PNG, TIFF) and for
  PGM (Pillow rescales any maxval above 255 to 0–65535), the file's BitsPerSample
  for a TIFF read as mode I (unsigned 32-bit samples are read back as unsigned;
  signed types use their non-negative half 0…2^(bits-1)-1, negatives are black),
  otherwise 32-bit signed. Pillow itself reduces 16-bit RGB(A) files to their
  high byte, so the rule is the same for grayscale and colour, and a 16-bit copy
  of an 8-bit image (value·257) gives exactly the 8-bit pixels.
- **Float images (mode F) are taken to be in [0, 1]**: round(255·v), values
  outside clipped, NaN black. A float file in 0–255 is therefore near-white;
  guessing the range from the content would make one pixel depend on the others.
- **Transparency** (an alpha band, palette or colour-key transparency) is
  composited on one fixed white background: transparent pixels keep whatever
  colour the editor left under them, so without a fixed background the same
  picture gives different pixels; white is what a page or viewer shows.
- **Very large images** (more than MAX_PIXELS = 2^26 pixels, e.g. 8192×8192) are
  decoded at reduced size where the format can (JPEG draft mode: DCT scaling by
  1/2, 1/4 or 1/8, longest side kept at DRAFT_SIDE = 1024 or more, over twice any
  encoder's input); otherwise they are skipped as "image too large (W×H)", the
  size as stored in the file. This check replaces Pillow's decompression-bomb
  check (which would warn, or refuse before draft mode could help).
- Grayscale → RGB by replication; other modes (1, CMYK, YCbCr) by Pillow's convert.

A file that cannot be decoded raises DecodeError with the reason; stage one
records it in the cache's /failures, predict as a failed record.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 2**26  # below Pillow's own warning threshold (about 89.5 million)
DRAFT_SIDE = 1024  # longest side after draft decoding: over twice any encoder input (224–448 px)
BACKGROUND = (255, 255, 255)  # white, what a page or viewer shows under transparent pixels
_PILLOW_LIMIT = threading.Lock()


class DecodeError(Exception):
    """Why one image could not be used; recorded in the cache, never fatal."""


def load_image(source: Path | str | bytes | BinaryIO) -> Image.Image:
    """Decode fully (so truncation is found here) as 8-bit RGB, by the rules in the module docstring.

    `source`: a file's path, or its bytes or an open binary file (a tar shard's member): the same rules
    whatever holds the encoded picture."""
    try:
        if _empty(source):
            raise DecodeError("zero-byte file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                stored = im.size
                _reduce_if_large(im)
                try:
                    im.load()
                except Image.DecompressionBombError:  # a frame larger than the image (GIF): same verdict
                    raise DecodeError(_too_large(stored)) from None
                return _as_seen(im)
    except FileNotFoundError:
        raise DecodeError("missing file") from None
    except PermissionError:
        raise DecodeError("unreadable (permission denied)") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError(f"truncated or corrupt image ({e})") from None


def _empty(source: Path | str | bytes | BinaryIO) -> bool:
    """No bytes at all (the file object's position is kept)."""
    if isinstance(source, bytes):
        return not source
    if isinstance(source, (str, os.PathLike)):
        return Path(source).stat().st_size == 0
    at = source.tell()
    empty = not source.read(1)
    source.seek(at)
    return empty


def _open(source: Path | str | BinaryIO) -> ImageFile.ImageFile:
    """Image.open without Pillow's size check: it runs before draft mode can shrink a JPEG and names no size.

    MAX_PIXELS is checked instead (`_reduce_if_large`). The lock keeps threads from
    restoring each other's value; worker processes each have their own.
    """
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _too_large(size: tuple[int, int]) -> str:
    return f"image too large ({size[0]}×{size[1]})"


def _reduce_if_large(im: Image.Image) -> None:
    """Over MAX_PIXELS: ask the decoder for a reduced size (JPEG can), else refuse before decoding."""
    w, h = im.size
    if w * h <= MAX_PIXELS:
        return
    scale = DRAFT_SIDE / max(w, h)  # draft keeps both sides >= the request, so the longest stays >= DRAFT_SIDE
    im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    if im.size[0] * im.size[1] > MAX_PIXELS:
        raise DecodeError(_too_large((w, h)))


def _as_seen(im: Image.Image) -> Image.Image:
    """A loaded image → upright 8-bit RGB, transparency composited on BACKGROUND."""
    ImageOps.exif_transpose(im, in_place=True)
    im = _eight_bit(im)
    try:
        if im.has_transparency_data:
            back = Image.new("RGBA", im.size, (*BACKGROUND, 255))
            return Image.alpha_composite(back, im.convert("RGBA")).convert("RGB")
        return im.convert("RGB")
    except ValueError:  # Pillow has no conversion (e.g. LAB without a colour profile)
        raise DecodeError(f"unsupported pixel mode {im.mode}") from None


def _eight_bit(im: Image.Image) -> Image.Image:
    """Modes I;16*, I and F → L (LA where a 16/32-bit colour key marks transparent pixels); others unchanged."""
    if im.mode == "F":
        values = np.rint(np.clip(np.nan_to_num(np.asarray(im), nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
        return Image.fromarray(values)
    if im.mode != "I" and not im.mode.startswith("I;16"):
        return im
    top, unsigned = _integer_white(im)
    raw = np.asarray(im)
    if unsigned:
        raw = raw.view(np.uint32)
    gray = Image.fromarray(_high_byte(raw, top))
    key = im.info.get("transparency")
    if isinstance(key, int):  # the key is a sample value, so match it before scaling
        gray = Image.merge("LA", (gray, Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8))))
    return gray


def _integer_white(im: Image.Image) -> tuple[int, bool]:
    """(the sample value shown as white, whether mode-I samples are unsigned 32-bit) by the file's bit depth."""
    if im.mode != "I" or im.format == "PPM":
        return 2**16 - 1, False
    tags = getattr(im, "tag_v2", None)  # TIFF: BitsPerSample, SampleFormat (1 unsigned, 2 signed)
    bits = _first(tags.get(258)) if tags is not None else None
    if not bits:
        return 2**31 - 1, False
    if _first(tags.get(339)) == 2:
        return 2 ** (bits - 1) - 1, False
    return 2**bits - 1, bits == 32


def _first(value: object) -> int | None:
    """A TIFF tag's first value (tags per sample come as tuples)."""
    if isinstance(value, tuple):
        value = value[0] if value else None
    return int(value) if value is not None else None


def _high_byte(raw: np.ndarray, top: int) -> np.ndarray:
    """Samples in 0…top (top = 2^bits - 1; below 0 is black) → their top 8 bits."""
    clipped = np.clip(raw, 0, top)
    shift = top.bit_length() - 8
    if shift >= 0:
        return (clipped >> shift).astype(np.uint8)
    return (clipped.astype(np.uint16) * 255 // top).astype(np.uint8)


def clip_frames(folder: Path, frame_index: list[int]) -> list[Path]:
    """The sampled frame files of a clip: its folder's image files in sorted order."""
    if not folder.is_dir():
        raise DecodeError("missing clip folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DecodeError("clip folder has no image files")
    if max(frame_index) >= len(files):
        raise DecodeError(f"clip folder has {len(files)} frames, the list says more (needs frame {max(frame_index)})")
    return [files[i] for i in frame_index]


