"""A user's text and JSON files read with one rule: a file that cannot be read, or is not JSON, is one
ExpclipError naming the file (and for JSON the line), never a traceback."""

from __future__ import annotations

import json
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from expclip.base.errors import ExpclipError


def read_text(path: Path | Traversable, what: str, *, encoding: str = "utf-8") -> str:
    """The file's text; `what` names it in the error ("label map", "list file", ...)."""
    try:
        return path.read_text(encoding)
    except (OSError, UnicodeDecodeError) as e:
        raise ExpclipError(f"{path}: cannot read {what} ({e})") from None


def parse_json(path: Path | Traversable, text: str, **loads: Any) -> Any:
    """`text` (read from `path`) as JSON; `loads` goes to json.loads (e.g. an object_pairs_hook)."""
    try:
        return json.loads(text, **loads)
    except json.JSONDecodeError as e:
        raise ExpclipError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_json(path: Path | Traversable, what: str) -> Any:
    """The file's JSON value."""
    return parse_json(path, read_text(path, what))
