"""Provenance shared by the encoders: library versions and file hashes.

Every feature group of a cache carries the configuration that produced it
(docs/cache-format.md); both encoders derive keys and attributes the same way.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from huggingface_hub import snapshot_download

from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.checksums import file_blocks

WEIGHT_FILES = ("*.safetensors", "*.bin")  # what from_pretrained reads weights from


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights can be gigabytes), once per process."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so a rewritten file is hashed again."""
    with open(path, "rb") as f:
        return fmt.digest(file_blocks(f))


def folder_weights_sha256(folder: str | Path) -> str:
    """sha256 of the `sha256sum` listing of a folder's weight files in sorted order ("" when it has none).

    One rule for one file and for many shards; checkable by hand with
    `ls *.safetensors *.bin | LC_ALL=C sort | xargs sha256sum | sha256sum` in the folder.
    """
    files = sorted({path for pattern in WEIGHT_FILES for path in Path(folder).glob(pattern)})
    if not files:
        return ""
    listing = "".join(f"{sha256_file(path)}  {path.name}\n" for path in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def weights_sha256(source: str, commit: str | None) -> str:
    """The weights' hash for a folder or an HF id (its cached snapshot's files).

    An id whose files are not on this disk records `commit:<hash>` when the
    config names its commit (transformers < 5 does), else "".
    """
    if Path(source).is_dir():
        return folder_weights_sha256(source)
    try:
        found = folder_weights_sha256(snapshot_download(source, local_files_only=True))
    except (OSError, ValueError):  # not cached here (LocalEntryNotFoundError is an OSError)
        found = ""
    return found or (f"commit:{commit}" if commit else "")


def versions_json() -> str:
    """JSON object of the library versions that shape the features."""
    found = {"expclip": __version__}
    for name, package in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("transformers", "transformers")):
        try:
            found[name] = version(package)
        except PackageNotFoundError:
            found[name] = ""
    return json.dumps(found, sort_keys=True)
