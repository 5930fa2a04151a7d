"""Provenance shared by the encoders: cache keys, library versions, file hashes.

Every feature group of a cache carries the configuration that produced it
(docs/cache-format.md); both encoders derive keys and attributes the same way.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import expclip
from expclip.cache.format import sanitize
from expclip.stages.encoders.transforms import OFFICIAL

LOCAL_DIR = "local-dir:"


def encoder_key(parts: list[str], transform: str) -> str:
    """`<part>@<part>...` with characters outside [A-Za-z0-9._-] as `_`, `+official` for the official transform."""
    key = "@".join(sanitize(part) for part in parts)
    return key + "+official" if transform == OFFICIAL else key


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions_json() -> str:
    """JSON object of the library versions that shape the features."""
    found = {"expclip": expclip.__version__}
    for name, package in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("transformers", "transformers")):
        try:
            found[name] = version(package)
        except PackageNotFoundError:
            found[name] = ""
    return json.dumps(found, sort_keys=True)
