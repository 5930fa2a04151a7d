"""sha256 of bytes, of a file and of JSON fields: how heads and indexes record what they were written as."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

from expclip.cache import format as fmt
from expclip.cache.checksums import file_blocks


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stream_sha256(f: BinaryIO) -> str:
    """sha256 of what is left to read in an open file, a block at a time (an index may be larger than the
    memory left)."""
    return fmt.digest(file_blocks(f))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


def json_sha256(fields: dict) -> str:
    """sha256 of `fields` as canonical JSON: the same for any spelling of the same values; NaN or inf is refused
    (ValueError), as JSON has neither."""
    return sha256_hex(json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def seal(fields: dict, name: str) -> dict:
    """`fields` plus `name`: the sha256 of the others, so that a record (a head's card, an index's provenance)
    shows any later change of its own values."""
    return {**fields, name: json_sha256(fields)}


def sealed(record: dict, name: str) -> bool:
    """Whether `record[name]` is the sha256 of its other fields (False with NaN or inf: never written by seal)."""
    try:
        return record.get(name) == json_sha256({k: v for k, v in record.items() if k != name})
    except ValueError:
        return False
