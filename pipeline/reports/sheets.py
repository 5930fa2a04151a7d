"""Contact sheets (PNG) of search hits and audit pairs: the faces themselves, with their scores (and a hit's label).

Images are read under one root per cache: the absolute folder extract recorded
(`source_root`: the source folder, or the folder a list's relative paths start
from), or `image_root` when the files have moved. An item id is joined to that
root; an id that would leave it (`..`, or an absolute path outside it) is never
read. Caches written before `source_root` existed fall back to their `source`
when it is absolute (the folder itself, or a list file's folder); a relative one
says nothing of where the command ran, so those need `image_root`. A clip shows
its middle sampled frame (for an audit pair, the frame that matched). A tile
without a picture is grey and says why: not found, outside the root, not an
image, unreadable.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from matplotlib.figure import Figure

from expclip.base.errors import ExpclipError
from expclip.cache.reader import CacheReader
from expclip.reports.files import write_png
from expclip.stages.encoders.images import DecodeError, clip_frames, load_image

COLUMNS = 6
THUMB = 128
NOT_FOUND, OUTSIDE, NOT_AN_IMAGE, UNREADABLE = "not found", "outside the root", "not an image", "unreadable"
_REASONS = {"missing file": NOT_FOUND, "missing clip folder": NOT_FOUND, "not an image": NOT_AN_IMAGE}


class Locator:
    """Where one cache's items live on disk, and their pictures as small arrays (or why there is none)."""

    def __init__(self, cache: Path, image_root: Path | None = None) -> None:
        with CacheReader(cache) as reader:
            attrs = reader.attrs
            items = reader.items()
        self.cache = Path(cache)
        self.root = Path(os.path.abspath(image_root)) if image_root is not None else recorded_root(self.cache, attrs)
        self.position = {item_id: i for i, item_id in enumerate(items.ids)}
        self.frames = items.frame_index
        self.unshown: Counter[str] = Counter()  # tiles drawn without a picture, by reason

    def path(self, item_id: str) -> Path | None:
        """The item's file or clip folder, or None when its id would lead outside the root."""
        rel = PurePosixPath(item_id)
        if not rel.parts or ".." in rel.parts:
            return None
        path = Path(item_id) if rel.is_absolute() else self.root / rel
        return path if path.is_relative_to(self.root) else None

    def shows(self, path: Path) -> str | None:
        """The id of the item whose picture `path` is (its file, or a frame in its clip folder), else None: a sheet
        must never be written over a picture it shows."""
        real, root = Path(os.path.realpath(path)), Path(os.path.realpath(self.root))
        if not real.is_relative_to(root):
            return None
        rel = real.relative_to(root)
        owners = (rel, rel.parent) if self.frames is not None else (rel,)
        return next((i for c in owners for i in (c.as_posix(), str(root / c)) if i in self.position), None)

    def picture(self, item_id: str, slot: int | None = None) -> np.ndarray | str:
        """The item's image (a clip's frame `slot`, default its middle one) as a THUMB-pixel RGB array, or why not."""
        found = self._picture(item_id, slot)
        if isinstance(found, str):
            self.unshown[found] += 1
        return found

    def _picture(self, item_id: str, slot: int | None) -> np.ndarray | str:
        path = self.path(item_id)
        if path is None:
            return OUTSIDE
        try:
            if self.frames is not None:
                sampled = self.frames[self.position[item_id]].tolist()
                path = clip_frames(path, [sampled[len(sampled) // 2 if slot is None else slot]])[0]
            image = load_image(path)
        except DecodeError as e:
            return _REASONS.get(str(e), UNREADABLE)
        except (KeyError, IndexError):  # an id or frame the cache does not hold
            return NOT_FOUND
        image.thumbnail((THUMB, THUMB))
        return np.asarray(image)


def unshown(where: Locator) -> str | None:
    """One line on the tiles of a cache drawn without a picture, or None when every tile has one."""
    if not where.unshown:
        return None
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(where.unshown.items()))
    return (f"{where.cache}: {where.unshown.total()} tile(s) without a picture ({reasons}); its images are read "
            f"under {where.root} (--image-root DIR: where they are now)")


def recorded_root(cache: Path, attrs: dict) -> Path:
    """The folder a cache's item ids are relative to, as extract recorded it (see the module docstring)."""
    if attrs.get("source_root"):
        return Path(str(attrs["source_root"]))
    source = Path(str(attrs.get("source", "")))
    if not source.is_absolute():
        raise ExpclipError(f"{cache}: records no image root, only the relative source {str(source)!r} (written "
                           "before extract recorded source_root); give --image-root DIR, the folder its ids start from")
    return source if source.is_dir() else source.parent


def _tile(ax, picture: np.ndarray | str, caption: str) -> None:
    shown = not isinstance(picture, str)
    ax.imshow(picture if shown else np.full((THUMB, THUMB, 3), 200, np.uint8))
    ax.set_title(caption if shown else f"{caption}\n({picture})", fontsize=7)
    ax.axis("off")


def _grid(tiles: int, columns: int) -> tuple[Figure, list]:
    rows = max(1, math.ceil(tiles / columns))
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[tiles:]:
        ax.axis("off")
    return fig, axes


def hits_figure(where: Locator, query: str, hits: list[dict]) -> Figure:
    """One tile per hit: rank and score, its label (what the cache says it shows), id."""
    fig, axes = _grid(len(hits), COLUMNS)
    fig.suptitle(f"{where.cache.name}: nearest to {query}", fontsize=9)
    for ax, h in zip(axes, hits):
        label = h.get("label") or "no label"
        _tile(ax, where.picture(h["id"]), f"#{h['rank']} {h['score']:.3f}\n{_short(label)}\n{_short(h['id'])}")
    return fig


def hits_sheet(where: Locator, query: str, hits: list[dict], out: Path) -> Path:
    return write_png(hits_figure(where, query, hits), out)


def pairs_sheet(pairs: list[dict], out: Path, where: dict[str, Locator], limit: int = 24) -> Path:
    """The `limit` closest pairs, side by side: each pair's two frames and its score; `where`: each pair's
    caches (as the pairs name them) -> their Locator."""
    shown = pairs[:limit]
    fig, axes = _grid(2 * len(shown), 2 * (COLUMNS // 2))
    fig.suptitle(f"closest near-duplicate pairs ({len(shown)} of {len(pairs)})", fontsize=9)
    for k, p in enumerate(shown):
        a, b = where[p["a"]].picture(p["a_id"], p["a_frame"]), where[p["b"]].picture(p["b_id"], p["b_frame"])
        _tile(axes[2 * k], a, f"{p['score']:.4f}\n{_short(p['a_id'])}")
        _tile(axes[2 * k + 1], b, f"{Path(p['b']).stem}\n{_short(p['b_id'])}")
    return write_png(fig, out)


def _short(text: str, most: int = 24) -> str:
    return text if len(text) <= most else "…" + text[-most + 1:]
