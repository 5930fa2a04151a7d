"""`expclip cache export`: a cache's features in the layout clip-retrieval writes and embedding-reader reads.

OUT/
  img_emb/img_emb_0.npy              (rows, D) float16, unit rows (clip-retrieval stores them so)
  metadata/metadata_0.parquet        one row per img_emb row: id, label, image_path, frame
  text_emb/text_emb_0.npy            every prompt of every prompt set, float16 unit rows
  text_metadata/metadata_0.parquet   prompt_set, prompt, class
  teacher_emb/teacher_emb_0.npy      with --teacher: the pooled teacher feature of each img_emb row, unit rows
  export.json                        written last: what was exported from which cache (the completion marker)

Items that could not be decoded have no features and no row. A clip gives one
row per sampled frame (`frame`: its index in the clip's frame list; null for
pictures). `image_path` is the item as found: the source root joined with the
item id (`.../faces-00001.tar/KEY` names a tar shard's member). Each file is
written to a temporary name and renamed; export.json is removed first and
written last, so a folder with it holds one complete export. Rows are read
and written in blocks, so an export needs little memory whatever the cache's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.atomic import ensure_folder
from expclip.cache.reader import CacheReader
from expclip.reports import files
from expclip.stages.shared.select import choose, teacher_group

MARKER = "export.json"
IMAGES, METADATA = "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet"
TEXTS, TEXT_METADATA = "text_emb/text_emb_0.npy", "text_metadata/metadata_0.parquet"
TEACHER = "teacher_emb/teacher_emb_0.npy"
WRITES = (IMAGES, METADATA, TEXTS, TEXT_METADATA, TEACHER, MARKER)  # what an output must not replace
BLOCK = 65536  # item rows read at once


def export(cache: Path, out: Path, *, clip_key: str | None = None, teacher: bool = False,
           teacher_key: str | None = None, instruction: str | None = None) -> dict:
    """Write the export of `cache` into the folder `out`; returns what export.json records."""
    out = Path(out)
    (out / MARKER).unlink(missing_ok=True)
    with CacheReader(cache) as r:
        key = choose("CLIP image key", "--clip-key", clip_key, r.image_keys(), r.path)
        groups = {IMAGES: fmt.image_path(key)}
        if teacher:
            groups[TEACHER] = fmt.teacher_path(*teacher_group(r, teacher_key, instruction))
        items = r.items()
        frames = None if items.frame_index is None else items.frame_index.shape[1]
        for name, group in groups.items():
            _write_rows(r, group, items.ok, out / name)
        _write_table(out / METADATA, _metadata(items, Path(r.attrs.get("source_root", "")), frames))
        sets = r.text_sets(key)
        texts = [(s, r.text(key, s)) for s in sets]
    text_rows = np.concatenate([t.features for _, t in texts]) if texts else np.zeros((0, 0), np.float32)
    ensure_folder((out / TEXTS).parent)
    files.write_npy(out / TEXTS, np.float16, text_rows.shape, [_unit(text_rows)])
    _write_table(out / TEXT_METADATA, {
        "prompt_set": [s for s, t in texts for _ in t.prompts],
        "prompt": [p for _, t in texts for p in t.prompts],
        "class": [t.class_names[c] for _, t in texts for c in t.class_index],
    })
    record = {"expclip": __version__, "cache": str(cache), "clip_key": key, "groups": groups,
              "rows": int(items.ok.sum()) * (frames or 1), "items_without_features": int((~items.ok).sum()),
              "prompt_sets": sets, "text_rows": len(text_rows)}
    files.write_json(record, out / MARKER)
    return record


def _unit(rows: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (a zero row stays zero), stored as float16."""
    rows = rows.astype(np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1)).astype(np.float16)


def _write_rows(r: CacheReader, group: str, ok: np.ndarray, target: Path) -> None:
    """The group's rows of the items with features, frames flattened, as unit float16 rows, block by block."""
    (shape, _), kept = r.group_shape(group), int(ok.sum())
    per_item = int(np.prod(shape[1:-1], dtype=np.int64))  # frames per clip, 1 for pictures

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, shape[0], BLOCK):
            block = r.rows(group, start, min(start + BLOCK, shape[0]))[ok[start:start + BLOCK]]
            yield _unit(block.reshape(-1, shape[-1]))

    ensure_folder(target.parent)
    files.write_npy(target, np.float16, (kept * per_item, shape[-1]), blocks())


def _metadata(items: fmt.Items, root: Path, frames: int | None) -> dict[str, list]:
    """One row per exported feature row: the item's id, class name (None: unlabelled), path and frame."""
    kept = np.flatnonzero(items.ok)
    per_item = frames or 1
    ids = [items.ids[i] for i in kept for _ in range(per_item)]
    return {
        "id": ids,
        "label": [items.class_names[items.labels[i]] if items.labels[i] >= 0 else None
                  for i in kept for _ in range(per_item)],
        "image_path": [(root / i).as_posix() for i in ids],
        "frame": [None] * len(ids) if frames is None else items.frame_index[kept].reshape(-1).tolist(),
    }


def _write_table(target: Path, columns: dict[str, list]) -> None:
    ensure_folder(target.parent)
    files.write_parquet(columns, target, {"frame": pa.int32()})
