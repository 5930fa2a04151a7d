"""Whole-file-or-nothing writes: every file expclip produces appears complete or not at all.

Temporary files are named `<name>.tmp-<host>-<pid>`, so several processes (on
one host or on several sharing a folder) never write the same temporary file,
and a leftover can be attributed: only one whose process is known to be dead
(same host, pid gone) is ever removed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

TMP = ".tmp-"


def _host() -> str:
    """This host's name as it appears in temporary names ('-' kept, '/' impossible in hostnames)."""
    return socket.gethostname() or "localhost"


def temporary_name(path: Path) -> Path:
    """The temporary file this process uses for `path`."""
    return path.with_name(f"{path.name}{TMP}{_host()}-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename or link itself survives a power cut
    finally:
        os.close(fd)


def _write_synced(tmp: Path, write: Callable[[Path], None]) -> None:
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temporary name beside `path`, fsync it, rename it over `path`.

    A reader never sees half a file. Use it for files that any writer would
    write identically (a shard, a merged cache): the last rename wins.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        _write_synced(tmp, write)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def create_exclusively(path: Path, write: Callable[[Path], None]) -> bool:
    """Like `write_atomically`, but only if `path` does not exist yet; False when another was first.

    The complete temporary file is hard-linked to `path` (link fails on an
    existing name, also over NFS), so of several concurrent writers exactly one
    creates the file and the others read what it wrote.
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = temporary_name(path)
    try:
        _write_synced(tmp, write)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_dead_temporaries(folder: Path, pattern: str = "*", *, recursive: bool = False) -> list[Path]:
    """Remove `<pattern>.tmp-<this host>-<pid>` files in `folder` whose process is gone; returns them.

    A temporary file of a live process (or of another host, whose processes
    cannot be checked from here) is left alone: it may be mid-write.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mark = f"{TMP}{_host()}-"
    found = folder.rglob(f"{pattern}{mark}*") if recursive else folder.glob(f"{pattern}{mark}*")
    removed = []
    for tmp in found:
        pid = tmp.name.rpartition(mark)[2]
        if pid.isdigit() and not _alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
