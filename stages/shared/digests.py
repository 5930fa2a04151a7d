"""sha256 of bytes and of JSON fields: how heads record what they were written as."""

from __future__ import annotations

import hashlib
import json


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(fields: dict) -> str:
    """sha256 of `fields` as canonical JSON: the same for any spelling of the same values; NaN or inf is refused
    (ValueError), as JSON has neither."""
    return sha256_hex(json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
