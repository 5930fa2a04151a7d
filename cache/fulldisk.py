"""h5py on a full disk: the one place that keeps a failed HDF5 write from crashing the process.

HDF5 cannot survive a failed flush: when the disk fills while h5py closes a
dataset or a file, the library keeps broken ids that crash (segfault) when
anything touches them again, at the latest when it shuts down at exit. And
h5py closes (so flushes) in `__dealloc__`, where an error cannot be raised,
only printed ("Exception ignored").

So a write runs inside `hdf5_guard`: a full-disk error that h5py can only
print is collected instead, and h5py is disarmed at once (`disarm`: every open
file, group, dataset and attribute forgotten without calling HDF5). After a
failed write, `release(tmp)` disarms h5py too when the temporary file is HDF5
and frees its blocks. A disarmed process ends with `os._exit` before HDF5's
clean-up (exit status 2, stdout and stderr flushed); the one-line error has
been raised by then as usual. Which errors mean a full disk is the caller's
rule (`cache.atomic`), passed in as `is_full`.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
EXIT_STATUS = 2  # of a process that must skip HDF5's clean-up (the CLI's status for a user-facing error)
_DISARMED: list[bool] = []


@contextmanager
def hdf5_guard(is_full: Callable[[BaseException], bool]) -> Iterator[list[BaseException]]:
    """Run a write; yields the list that collects the full-disk errors h5py could only print.

    Cython prints the same error first through `sys.excepthook`, then hands it
    to `sys.unraisablehook`: both are silenced for a full disk, and any other
    error goes to the hooks that were installed before.
    """
    hooks = sys.unraisablehook, sys.excepthook
    ignored: list[BaseException] = []

    def on_unraisable(unraisable) -> None:
        if is_full(unraisable.exc_value):
            ignored.append(unraisable.exc_value)
            disarm()
        else:
            hooks[0](unraisable)

    def on_printed(kind, value, tb) -> None:
        if not is_full(value):
            hooks[1](kind, value, tb)

    sys.unraisablehook, sys.excepthook = on_unraisable, on_printed
    try:
        yield ignored
    finally:
        sys.unraisablehook, sys.excepthook = hooks


def release(tmp: Path) -> None:
    """After a write of `tmp` failed on a full disk: if it is an HDF5 file, disarm h5py (its flush may have
    failed: HDF5 must never touch it again) and free its blocks (HDF5 may keep its descriptor)."""
    try:
        with open(tmp, "rb") as f:
            if f.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                return
        disarm()
        os.truncate(tmp, 0)
    except OSError:
        pass


def hdf5_disarmed() -> bool:
    """Whether a failed HDF5 write disarmed h5py in this process (it then exits before HDF5's clean-up)."""
    return bool(_DISARMED)


def disarm() -> None:
    """Make h5py treat every file, group, dataset and attribute as closed, without calling HDF5.

    The ids involved in a failed flush crash when touched again — by
    `File.close()`, by h5py freeing its objects, even by asking which files are
    open. Which ids belong to the failed file cannot be asked safely, so every
    such h5py identifier is set to 0 (`_close()` of a locked id only forgets
    it); files opened later work normally. Property lists and types belong to
    no file and are left alone.
    """
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    if not _DISARMED:
        atexit.register(_exit_before_hdf5_cleanup)  # registered after h5py's handler: runs before it
        _DISARMED.append(True)
    in_files = (h5py.h5f.FileID, h5py.h5g.GroupID, h5py.h5d.DatasetID, h5py.h5a.AttrID)
    for obj in gc.get_objects():
        if issubclass(type(obj), in_files) and not obj.locked:  # type(): never a proxy's __class__
            obj.locked = True
            obj._close()  # locked: no HDF5 call, the id becomes 0
            obj.locked = False


def _exit_before_hdf5_cleanup() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(EXIT_STATUS)
