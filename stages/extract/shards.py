"""WebDataset tar shards as a source: members grouped by key, listed from the tar headers, read by offset.

The shards are those img2dataset writes: `{key}.jpg|png|webp|...` with optional
`{key}.cls`, `{key}.json`, `{key}.txt`, in uncompressed tars. A SOURCE is one
`.tar` file or a brace pattern (`faces-{00000..00999}.tar`, expanded by
`braceexpand` as webdataset does). Members follow webdataset's rules: a key is
the member's name up to the first dot of its last path part, the rest its
extension (compared in lower case); directories, names without a dot and
`__meta__` names are skipped; a key with no image member is ignored (counted).

An item's id is `SHARD/KEY`, SHARD being the tar's path relative to the shards'
common folder (`faces-00001.tar/000010023`): unique even when two shards reuse
a key, and the source root plus the id names the member. Items come in shard
order, then member order. Labels: `--label-field NAME` takes that field of the
key's `.json`, else a `.cls` member is read as a number; absent, unlabelled.

Listing is one pass over the headers (tarfile seeks over member data): the
image member's offset and size are kept, and DataLoader workers read those bytes
directly, so nothing is unpacked to disk and a rank or `--part` reads only its
own shards. A tar is read with random access rather than webdataset's stream
for that reason. A tar that does not end in the end-of-archive block after its
last member (cut short, or a damaged header that stops the listing) is refused
by one line naming the shard; a member that does not decode is a recorded failure.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from expclip.base.errors import ExpclipError
from expclip.stages.encoders.images import IMAGE_SUFFIXES, DecodeError

SHARD_SUFFIX = ".tar"
BLOCK = tarfile.BLOCKSIZE
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
IMAGE_EXTENSIONS = {s.lstrip(".") for s in IMAGE_SUFFIXES}


@dataclass
class Member:
    """Where one item's image lies: `size` bytes at `offset` of `shard`."""

    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        """The member's bytes; a shard gone or unreadable since the listing is this item's decode failure."""
        try:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                return f.read(self.size)
        except OSError as e:
            raise DecodeError(f"unreadable shard ({e.strerror or e})") from None


@dataclass
class Listed:
    """The items of a set of shards, in shard then member order; `labels`: (where, label or None) per item."""

    ids: list[str]
    members: list[Member]
    labels: list[tuple[str, str | None]]
    starts: list[int]  # the first item of each shard (work units never cross a shard)
    root: Path
    ignored: int  # keys without an image member


def is_shards(source: str) -> bool:
    """A `.tar` path or a brace pattern of them (what `--source-type auto` reads as shards)."""
    return source.endswith(SHARD_SUFFIX) and (not Path(source).is_dir())


def expand(source: str) -> list[Path]:
    """The shard files a SOURCE names, in pattern order; every one must exist."""
    paths = [Path(p) for p in braceexpand(source)]
    for path in paths:
        if not path.is_file():
            shown = f" (from {source})" if len(paths) > 1 else ""
            raise ExpclipError(f"{path}: no such shard{shown}")
    return paths


def list_shards(source: str, label_field: str | None = None) -> Listed:
    """Every item of the shards SOURCE names (one header pass per shard)."""
    paths = expand(source)
    root = Path(os.path.commonpath([p.parent.absolute() for p in paths]))
    found = Listed([], [], [], [], root, 0)
    label_ext = "json" if label_field is not None else "cls"
    for path in paths:
        found.starts.append(len(found.ids))
        name = path.absolute().relative_to(root).as_posix()
        for key, image, raw in _samples(path, label_ext):
            if image is None:
                found.ignored += 1
                continue
            found.ids.append(f"{name}/{key}")
            found.members.append(Member(path, image.offset_data, image.size))
            where = f"{path}: {key}.{label_ext}"
            found.labels.append((where, None if raw is None else _label(where, raw, label_field)))
    if not found.ids:
        raise ExpclipError(f"{source}: no image members ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its shards")
    return found


Sample = tuple[str, tarfile.TarInfo | None, bytes | None]  # key, its image member, its label member's bytes


def _samples(path: Path, label_ext: str) -> list[Sample]:
    """Each key's image member and label bytes, in member order; the tar must end where its last member does."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            end = 0
            for info in tar:
                end = info.offset_data + -(-info.size // BLOCK) * BLOCK
                match = _KEY.match(info.name)
                if not info.isreg() or match is None or _META.match(info.name):
                    continue
                files = samples.setdefault(match.group(1), {})
                ext = match.group(2).lower()
                if ext in files:
                    raise ExpclipError(f"{path}: member {info.name!r} appears twice")
                files[ext] = info
            f = tar.fileobj
            f.seek(end)
            if f.read(BLOCK) != bytes(BLOCK):
                raise tarfile.ReadError(f"no end-of-archive block after its last member, at byte {end}")
            return [(key, next((files[e] for e in files if e in IMAGE_EXTENSIONS), None),
                     _bytes(f, files[label_ext]) if label_ext in files else None) for key, files in samples.items()]
    except tarfile.TarError as e:
        raise ExpclipError(f"{path}: truncated or damaged tar ({e}); download it again or leave it out of SOURCE "
                           "(uncompressed .tar only)") from None
    except OSError as e:
        raise ExpclipError(f"{path}: cannot read ({e.strerror or e})") from None


def _bytes(f, info: tarfile.TarInfo) -> bytes:
    f.seek(info.offset_data)
    return f.read(info.size)


def _label(where: str, raw: bytes, field: str | None) -> str | None:
    """A label as text (None: unlabelled): the `.cls` member's text, or the JSON field `field`."""
    try:
        text = raw.decode("utf-8").strip()
        if field is None:
            return text or None
        record = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExpclipError(f"{where}: unreadable ({e})") from None
    value = record.get(field) if isinstance(record, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
        raise ExpclipError(f"{where}: field {field!r} is {value!r}, not a class number or name")
    return None if value is None else str(value)
