"""Whole-file-or-nothing writes: every file expclip produces appears complete or not at all.

Temporary files are named `<name>.tmp-<host>-<pid>`, so several processes (on
one host or on several sharing a folder) never write the same temporary file,
and a leftover can be attributed: only one whose process is known to be dead
(same host, pid gone) is ever removed.

A write that fails for want of space (ENOSPC, EDQUOT) or permission (EACCES,
EPERM, EROFS) removes its temporary file and raises one `ExpclipError` naming
the file: `DiskFull` says how much was needed and how much is free. Callers
that know a file's size check it first with `require_space`. What h5py needs
to survive a full disk is kept apart, in `cache.fulldisk`.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Callable, NoReturn

from expclip.base.errors import ExpclipError
from expclip.cache import fulldisk

TMP = ".tmp-"
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
# How libraries that do not raise OSError say it (safetensors: "os error 28"; HDF5: "errno = 28").
NO_SPACE_WORDS = ("no space left on device", "disk quota exceeded", "os error 28", "errno = 28", "storagefull")
NOT_WRITABLE_WORDS = {"read-only file system": errno.EROFS, "permission denied": errno.EACCES,
                      "operation not permitted": errno.EPERM}


def host_name() -> str:
    """This host's name as it appears in temporary names ('-' kept, '/' impossible in hostnames)."""
    return socket.gethostname() or "localhost"


def followed(path: Path) -> Path:
    """The file a path names once its symbolic links are followed (the path itself when it is no link).

    Writers replace the target, not the link: a temporary written beside the
    link and renamed over it would turn the link into a file and leave the
    target stale. Only the last component is followed (a linked folder already
    holds what is written through it), so a plain path stays as it was given.
    """
    path = Path(path)
    for _ in range(40):  # the kernel's own limit on nested links (ELOOP)
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = target if target.is_absolute() else path.parent / target
    raise ExpclipError(f"{path}: too many levels of symbolic links")


def temporary_name(path: Path) -> Path:
    """The temporary file this process uses for `path`."""
    return path.with_name(f"{path.name}{TMP}{host_name()}-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename or link itself survives a power cut
    finally:
        os.close(fd)


def _write_synced(tmp: Path, write: Callable[[Path], None], ignored: list[BaseException]) -> None:
    """`write(tmp)`, then fsync; a full disk that h5py can only print goes to `ignored` (cache.fulldisk)."""
    with fulldisk.hdf5_guard(_no_space) as printed:
        try:
            write(tmp)
        finally:
            ignored.extend(printed)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


def size_text(n: int) -> str:
    """Bytes for people: 1023 B, 4.0 KiB, 1.5 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


class DiskFull(ExpclipError):
    """No room for `path`: `needed` bytes (None: unknown; at least `written`), `free` bytes on its filesystem."""

    def __init__(self, path: Path, needed: int | None, free: int, hint: str = "", written: int = 0):
        self.path, self.needed, self.free = Path(path), needed, free
        need = (f"needs about {size_text(needed)}, " if needed is not None
                else f"needs more than the {size_text(written)} written, " if written else "")
        super().__init__(f"{path}: no space left on the device ({need}{size_text(free)} free){hint}")


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on the filesystem of `folder` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_space(path: Path, needed: int, hint: str = "") -> None:
    """Refuse, before writing anything, a file of about `needed` bytes that the filesystem cannot hold."""
    free = free_bytes(Path(path).parent)
    if free < needed:
        raise DiskFull(path, needed, free, hint)


def ensure_folder(folder: Path) -> None:
    """`mkdir -p folder`, with a full or read-only disk as one ExpclipError naming the folder."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raised = _user_error(e, Path(folder), None, 0)
        if raised is None:
            raise
        raise raised from e


def _chain(e: BaseException | None) -> list[BaseException]:
    """`e` and the errors it was raised while handling (a close after a failed write)."""
    found: list[BaseException] = []
    while e is not None and all(e is not f for f in found):
        found.append(e)
        e = e.__cause__ or e.__context__
    return found


def _no_space(e: BaseException | None) -> bool:
    return any(isinstance(x, OSError) and x.errno in NO_SPACE or any(w in str(x).lower() for w in NO_SPACE_WORDS)
               for x in _chain(e))


def _not_writable(e: BaseException) -> int | None:
    """The errno of a read-only or forbidden target, also when a library only says it in words."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in NOT_WRITABLE:
            return x.errno
        for words, number in NOT_WRITABLE_WORDS.items():
            if words in str(x).lower():
                return number
    return None


def _user_error(
    e: BaseException, path: Path, needed: int | None, written: int, full: bool = False
) -> ExpclipError | None:
    """The one-line error a full or read-only disk deserves, or None for anything else."""
    folder = path.parent
    if full or _no_space(e) or (not isinstance(e, OSError) and free_bytes(folder) < 4096):  # torch.save says neither
        return DiskFull(path, needed, free_bytes(folder), written=written)
    number = _not_writable(e)
    if number is not None:
        return ExpclipError(f"{path}: cannot write ({os.strerror(number)})")
    return None


def _discard(tmp: Path) -> None:
    """Remove a temporary file; on a read-only filesystem even a missing one cannot be unlinked (EROFS)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _reraise(e: Exception, path: Path, tmp: Path, needed: int | None, ignored: list[BaseException]) -> NoReturn:
    """After `write(tmp)` or the rename raised: keep HDF5 from crashing, free the space, say why in one line."""
    try:
        written = tmp.stat().st_size
    except OSError:
        written = 0
    if ignored or _no_space(e):
        fulldisk.release(tmp)
    _discard(tmp)  # before measuring what is free
    raised = _user_error(e, path, needed, written, full=bool(ignored))
    if raised is None:
        raise e
    raise raised from (ignored[0] if ignored else e)


def _publish(path: Path, write: Callable[[Path], None], place: Callable[[Path, Path], None],
             needed: int | None = None) -> bool:
    """`write(tmp)`, fsync, then `place(tmp, path)`; False when `place` found the name taken.

    A symbolic link is followed: the temporary lies beside its target, which
    it replaces (`followed`). A full or read-only disk raises one
    ExpclipError (`needed`, when known, is reported); the temporary file is
    removed in every case.
    """
    path = followed(path)
    tmp = temporary_name(path)
    ignored: list[BaseException] = []
    try:
        _write_synced(tmp, write, ignored)
        place(tmp, path)
    except FileExistsError:
        return False
    except Exception as e:
        _reraise(e, path, tmp, needed, ignored)
    finally:
        _discard(tmp)
    _fsync_dir(path.parent)
    return True


def write_atomically(path: Path, write: Callable[[Path], None], *, needed: int | None = None) -> Path:
    """Call `write(tmp)` for a temporary name beside `path`, fsync it, rename it over `path`.

    A reader never sees half a file. Use it for files that any writer would
    write identically (a shard, a merged cache): the last rename wins. A
    symbolic link stays a link: its target is replaced.
    """
    path = Path(path)
    _publish(path, write, os.replace, needed)
    return path


def create_exclusively(path: Path, write: Callable[[Path], None]) -> bool:
    """Like `write_atomically`, but only if `path` does not exist yet; False when another was first.

    The complete temporary file is hard-linked to `path` (link fails on an
    existing name, also over NFS), so of several concurrent writers exactly one
    creates the file and the others read what it wrote.
    """
    path = Path(path)
    return not path.exists() and _publish(path, write, os.link)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_dead_temporaries(folder: Path, pattern: str = "*", *, recursive: bool = False,
                             any_host: bool = False) -> list[Path]:
    """Remove `<pattern>.tmp-<host>-<pid>` files in `folder` whose process is gone; returns them.

    A temporary file of a live process (or of another host, whose processes
    cannot be checked from here) is left alone: it may be mid-write. With
    `any_host`, for a caller that holds its cache's exclusive lock (so no
    writer is alive anywhere), every temporary file is a leftover.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mark = TMP if any_host else f"{TMP}{host_name()}-"
    found = folder.rglob(f"{pattern}{mark}*") if recursive else folder.glob(f"{pattern}{mark}*")
    removed = []
    for tmp in found:
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and (any_host or not process_alive(int(pid))) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
