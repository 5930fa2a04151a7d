"""Contact sheets (PNG) of search hits and audit pairs: the faces themselves, with their scores.

Images are found where the cache's items came from: the `source` it records
(a folder, or the folder of a list file) joined with each item id, or
`image_root` when the files have moved. A clip shows its middle sampled frame
(for an audit pair, the frame that matched). A file that cannot be found or
read becomes a grey tile saying so: a sheet never fails a search.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from expclip.cache.atomic import write_atomically
from expclip.cache.reader import CacheReader
from expclip.stages.extract.loading import DecodeError, clip_frames, load_image

COLUMNS = 6
THUMB = 128


class Locator:
    """Where a cache's items live on disk, and their pictures as small arrays."""

    def __init__(self, cache: Path, image_root: Path | None = None) -> None:
        with CacheReader(cache) as reader:
            source = Path(str(reader.attrs.get("source", "")))
            items = reader.items()
        self.root = image_root or (source if source.is_dir() else source.parent)
        self.position = {item_id: i for i, item_id in enumerate(items.ids)}
        self.frames = items.frame_index

    def picture(self, item_id: str, slot: int | None = None) -> np.ndarray | None:
        """The item's image (a clip's frame `slot`, default its middle one) as a THUMB-pixel RGB array."""
        path = self.root / item_id
        try:
            if self.frames is not None:
                sampled = self.frames[self.position[item_id]].tolist()
                path = clip_frames(path, [sampled[len(sampled) // 2 if slot is None else slot]])[0]
            image = load_image(path)
        except (DecodeError, OSError, KeyError, IndexError):
            return None
        image.thumbnail((THUMB, THUMB))
        return np.asarray(image)


def _tile(ax, picture: np.ndarray | None, caption: str) -> None:
    ax.imshow(picture if picture is not None else np.full((THUMB, THUMB, 3), 200, np.uint8))
    ax.set_title(caption if picture is not None else caption + "\n(image not found)", fontsize=7)
    ax.axis("off")


def _grid(tiles: int, columns: int) -> tuple[Figure, list]:
    rows = max(1, math.ceil(tiles / columns))
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[tiles:]:
        ax.axis("off")
    return fig, axes


def hits_sheet(cache: Path, query: str, hits: list[dict], out: Path, image_root: Path | None = None) -> Path:
    """One tile per hit: rank, score, id."""
    where = Locator(cache, image_root)
    fig, axes = _grid(len(hits), COLUMNS)
    fig.suptitle(f"{Path(cache).name}: nearest to {query}", fontsize=9)
    for ax, h in zip(axes, hits):
        _tile(ax, where.picture(h["id"]), f"#{h['rank']} {h['score']:.3f}\n{_short(h['id'])}")
    write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return out


def pairs_sheet(pairs: list[dict], out: Path, limit: int = 24, image_root: Path | None = None) -> Path:
    """The `limit` closest pairs, side by side: each pair's two frames and its score."""
    shown = pairs[:limit]
    locators: dict[str, Locator] = {}

    def picture(cache: str, item_id: str, slot: int | None) -> np.ndarray | None:
        if cache not in locators:
            locators[cache] = Locator(Path(cache), image_root)
        return locators[cache].picture(item_id, slot)

    fig, axes = _grid(2 * len(shown), 2 * (COLUMNS // 2))
    fig.suptitle(f"closest near-duplicate pairs ({len(shown)} of {len(pairs)})", fontsize=9)
    for k, p in enumerate(shown):
        _tile(axes[2 * k], picture(p["a"], p["a_id"], p["a_frame"]), f"{p['score']:.4f}\n{_short(p['a_id'])}")
        _tile(axes[2 * k + 1], picture(p["b"], p["b_id"], p["b_frame"]), f"{Path(p['b']).stem}\n{_short(p['b_id'])}")
    write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return out


def _short(text: str, most: int = 24) -> str:
    return text if len(text) <= most else "…" + text[-most + 1:]
