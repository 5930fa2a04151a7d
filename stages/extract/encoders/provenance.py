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

from expclip.base.version import __version__

def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights can be gigabytes), once per process."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so a rewritten file is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions_json() -> str:
    """JSON object of the library versions that shape the features."""
    found = {"expclip": __version__}
    for name, package in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("transformers", "transformers")):
        try:
            found[name] = version(package)
        except PackageNotFoundError:
            found[name] = ""
    return json.dumps(found, sort_keys=True)
