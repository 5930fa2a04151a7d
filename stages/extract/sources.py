"""SOURCE → items: image folders, `path[,label]` list files, official clip lists and WebDataset tar shards.

List files and clip lists are read as UTF-8, with or without a byte-order mark
(spreadsheet programs write one; it is not part of the first path), with LF or
CRLF line ends; blank lines and lines starting with `#` are skipped. A list
file's first line is a header, and skipped, when its first field is `path` in
any case and with any spaces, e.g. `path,label` or `Path, Label`; every other
line is `path[,label]` (CSV quoting allowed).

Tar shards (one `.tar` or a brace pattern of them) are listed by `shards`.

Only the listing happens here (fast, no decoding); files that turn out to be
unreadable are found and recorded by the loader during extraction.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expclip.base.errors import ExpclipError
from expclip.base.reading import read_text
from expclip.cache.format import Items
from expclip.stages.encoders.images import IMAGE_SUFFIXES
from expclip.stages.extract import shards
from expclip.stages.extract.source_config import SOURCE_TYPES, SourceConfig
from expclip.stages.shared import protocol


@dataclass
class Source:
    """Items plus where their pixels live: one path per image, a folder per clip, a tar member per shard item."""

    items: Items
    paths: list[Path]  # image file, clip folder (frames = its image files, sorted) or tar shard
    dataset: str
    origin: Path  # the SOURCE as given
    root: Path  # the folder relative item ids start from: the folder itself, a list's folder or --root
    ignored: int = 0  # non-image files skipped while listing a folder (keys without an image in shards)
    members: list[shards.Member] | None = None  # tar shards: where each item's image lies in its shard
    units: list[int] | None = None  # tar shards: each shard's first item (resume, --part and ranks split by shard)


def resolve(
    source: Path,
    *,
    kind: str = "auto",
    root: Path | None = None,
    strip_prefix: str | None = None,
    frames: int = protocol.DEFAULT_FRAMES,
    dataset: str | None = None,
    label_field: str | None = None,
) -> Source:
    """List a source; `root`/`strip_prefix` re-base list paths written on another machine; `label_field`:
    the JSON field tar shards' labels come from."""
    protocol.check_frames(frames)
    dataset = protocol.dataset_name(dataset)
    source = Path(source)
    if kind not in SOURCE_TYPES:
        raise ExpclipError(f"--source-type {kind!r}: choose one of {', '.join(SOURCE_TYPES)}")
    if _is_shards(source, kind):
        return _shards(str(source), dataset, label_field)
    if label_field is not None:
        raise ExpclipError("--label-field: only tar shards have JSON members to take labels from")
    if not source.exists():
        raise ExpclipError(f"{source}: no such file or folder")
    if kind == "auto":
        kind = "folder" if source.is_dir() else _sniff(source)
    name = dataset or source.stem
    if kind == "folder":
        return _folder(source, name)
    if kind == "list":
        return _list_file(source, root or source.parent, name)
    return _clip_list(source, root, strip_prefix, frames, name, dataset)


def from_config(source: Path, config: SourceConfig) -> Source:
    """SOURCE as `expclip extract` is told to read it. A dataset named for a clip list must be a benchmark: a clip
    list's labels are protocol classes, and the benchmark says how many."""
    found = resolve(source, kind=config.source_type, root=config.root, strip_prefix=config.strip_prefix,
                    frames=config.frames, dataset=config.dataset, label_field=config.label_field)
    if config.dataset and found.items.kind == "clips" and found.dataset not in protocol.dataset_classes():
        raise ExpclipError(f"--dataset {config.dataset!r}: a clip list takes its class count from its benchmark; "
                           f"known: {', '.join(protocol.dataset_classes())}")
    return found


def named_files(source: Path, kind: str = "auto") -> list[Path]:
    """The files SOURCE names itself (the shards of a pattern): what an output must not replace."""
    if _is_shards(source, kind):
        return shards.expand(str(source))
    return [source]


def _is_shards(source: Path, kind: str) -> bool:
    return kind == "shards" or (kind == "auto" and shards.is_shards(str(source)))


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines with 1-based line numbers (a UTF-8 byte-order mark is dropped)."""
    text = read_text(path, "list file", encoding="utf-8-sig")
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip() and not s.lstrip().startswith("#")]


def _sniff(path: Path) -> str:
    """`frame_dir num_frames label` lines are clip lists; anything else a list file."""
    lines = _lines(path)
    if not lines:
        raise ExpclipError(f"{path}: empty list file")
    fields = lines[0][1].split()
    if len(fields) == 3 and "," not in lines[0][1] and all(f.lstrip("-").isdigit() for f in fields[1:]):
        return "clips"
    return "list"


def _folder(folder: Path, name: str) -> Source:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder)))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ExpclipError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rel = [p.relative_to(folder) for p in images]
    classes = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r.parts[0]] if len(r.parts) > 1 else -1 for r in rel], dtype=np.int64)
    items = Items(ids=[r.as_posix() for r in rel], labels=labels, class_names=classes)
    return Source(items, images, name, folder, folder, ignored=len(files) - len(images))


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _list_file(path: Path, root: Path, name: str) -> Source:
    rows: list[tuple[int, str, str | None]] = []
    for position, (number, line) in enumerate(_lines(path)):
        fields = [f.strip() for f in next(csv.reader([line]))]
        if len(fields) > 2 or not fields[0]:
            raise ExpclipError(f"{path}:{number}: expected 'path[,label]', found {len(fields)} fields"
                               + ("" if fields[0] else " and an empty path"))
        if position == 0 and _is_header(fields):
            continue
        rows.append((number, fields[0], fields[1] if len(fields) == 2 and fields[1] else None))
    if not rows:
        raise ExpclipError(f"{path}: no entries")
    labels, class_names = labels_of([(f"{path}:{n}", lab) for n, _, lab in rows])
    paths = [Path(p) if Path(p).is_absolute() else root / p for _, p, _ in rows]
    ids = [_relative(p, root) for p in paths]
    return Source(Items(ids=ids, labels=labels, class_names=class_names), paths, name, path, root)


def _is_header(fields: list[str]) -> bool:
    """`path,label` in any case and spacing (fields are stripped); `path` alone or `path,<other>` too."""
    return fields[0].lower() == "path"


def labels_of(rows: list[tuple[str, str | None]]) -> tuple[np.ndarray, list[str]]:
    """(where, label or None) per item → labels and class names: numeric labels keep their numbers (names
    '0'..'n-1'); names are sorted into classes. Errors name the row's `where`."""
    given = [(where, lab) for where, lab in rows if lab is not None]
    numeric = [lab.lstrip("-").isdigit() for _, lab in given]
    if any(numeric) and not all(numeric):
        where = given[numeric.index(False) if numeric[0] else numeric.index(True)][0]
        raise ExpclipError(f"{where}: labels mix numbers and class names")
    if given and all(numeric):
        values = [int(lab) if lab is not None else -1 for _, lab in rows]
        bad = next(((where, v) for (where, _), v in zip(rows, values) if v < -1), None)
        if bad:
            raise ExpclipError(f"{bad[0]}: label {bad[1]} is negative (-1 means unlabelled)")
        return np.array(values, dtype=np.int64), [str(i) for i in range(max(values) + 1)]
    classes = sorted({lab for _, lab in given})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[lab] if lab is not None else -1 for _, lab in rows], dtype=np.int64), classes


def _shards(source: str, dataset: str | None, label_field: str | None) -> Source:
    """Tar shards: one item per key with an image member; the dataset is named after the shards' folder."""
    found = shards.list_shards(source, label_field)
    labels, class_names = labels_of(found.labels)
    items = Items(ids=found.ids, labels=labels, class_names=class_names)
    return Source(items, [m.shard for m in found.members], dataset or found.root.name, Path(source), found.root,
                  ignored=found.ignored, members=found.members, units=found.starts)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _clip_list(
    path: Path, root: Path | None, strip_prefix: str | None, frames: int, name: str, dataset: str | None
) -> Source:
    if strip_prefix and root is None:
        raise ExpclipError("--strip-prefix needs --root (the folder that replaces the prefix)")
    base = root or path.parent
    ids, paths, labels, counts = [], [], [], []
    n_classes = len(protocol.class_order())
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 3:
            raise ExpclipError(f"{path}:{number}: expected 'frame_dir num_frames label', found {len(fields)} fields")
        folder, count, label = fields
        if not count.isdigit() or int(count) < 1:
            raise ExpclipError(f"{path}:{number}: field 2 (num_frames) must be a positive integer")
        if not label.isdigit() or int(label) >= n_classes:
            raise ExpclipError(f"{path}:{number}: field 3 (label) must be 0..{n_classes - 1} (0-based protocol order)")
        if strip_prefix:
            if not folder.startswith(strip_prefix):
                raise ExpclipError(f"{path}:{number}: field 1 (frame_dir) does not start with --strip-prefix "
                                   f"{strip_prefix!r}")
            folder = folder[len(strip_prefix):].lstrip("/")
        clip = Path(folder) if Path(folder).is_absolute() else base / folder
        ids.append(_relative(clip, base))
        paths.append(clip)
        labels.append(int(label))
        counts.append(int(count))
    if not ids:
        raise ExpclipError(f"{path}: no clips")
    known = protocol.dataset_classes()
    if dataset is not None and dataset in known:
        n = known[dataset]
        if max(labels) >= n:
            raise ExpclipError(f"{path}: label {max(labels)} is outside {dataset}'s {n} classes")
    else:
        n = max(labels) + 1
    items = Items(
        ids=ids,
        labels=np.array(labels, dtype=np.int64),
        class_names=protocol.class_order()[:n],
        frame_index=np.array([protocol.frame_indices(c, frames) for c in counts], dtype=np.int32),
        num_frames=np.array(counts, dtype=np.int32),
    )
    return Source(items, paths, name, path, base)
