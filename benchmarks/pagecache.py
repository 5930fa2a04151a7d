"""What the benchmarks share for cold reads: dropping a file's pages from the page cache."""

from __future__ import annotations

import os
from pathlib import Path


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache, so that the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
