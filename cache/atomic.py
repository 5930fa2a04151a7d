"""Whole-file-or-nothing writes: every file expclip produces appears complete or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temporary name beside `path`, fsync it, rename it over `path`.

    The temporary name is `<name>.tmp-<pid>`, so a reader never sees half a file
    and leftovers of a killed process are recognisable by name.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path
