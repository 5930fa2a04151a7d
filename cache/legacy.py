"""Caches written before checksums: read whole once, in a child process, before this process opens them.

Such a file (HDF5 superblock version 0 or 1, as expclip 0.1 wrote) carries no
checksum of its structure, and a damaged byte there can crash HDF5 (a
segfault) or make it loop forever — which no exception handler can turn into a
clean error. So the first open of such a file in a process runs
`expclip cache verify` on it in a child: if the child survives and the stored
sha256 attributes match, this process reads the same bytes safely; a crash, a
hang or a mismatch becomes one DamagedCache line. Each file (path, size,
modification time) is checked once per process. New caches need none of this:
HDF5 and expclip check them as they are read.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from expclip.cache.checksums import NotACache, damaged

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
STRUCTURE = "the file's HDF5 structure"
_SURVIVED: set[tuple[str, int, int]] = set()  # files this process has seen read whole without harm
CHILD = [sys.executable, "-m", "expclip.cache.legacy"]
BASE_TIMEOUT_S, MIN_RATE = 60.0, 20e6  # generous: a healthy read goes at hundreds of MB/s
FOREIGN = 3  # the child's exit status for a healthy HDF5 file that expclip did not write


def _identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def is_legacy(path: Path) -> bool:
    """True for an HDF5 file with a superblock of version 0 or 1 (no metadata checksums)."""
    with open(path, "rb") as f:
        head = f.read(len(HDF5_SIGNATURE) + 1)
    return head[:len(HDF5_SIGNATURE)] == HDF5_SIGNATURE and len(head) > 8 and head[8] in (0, 1)


def check_in_child(path: Path) -> None:
    """Raise DamagedCache unless a child process reads the legacy cache at `path` whole and finds it intact."""
    path = Path(path)
    key = _identity(path)
    if key in _SURVIVED or not is_legacy(path):
        return
    timeout = BASE_TIMEOUT_S + key[1] / MIN_RATE
    try:
        done = subprocess.run([*CHILD, str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise damaged(path, STRUCTURE, f"HDF5 did not finish reading it within {timeout:.0f} s") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise damaged(path, STRUCTURE, f"HDF5 crashed reading it ({name})")
    if done.returncode == FOREIGN:
        raise NotACache(path, done.stdout.strip())
    if done.returncode != 0:
        lines = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.strip()]
        raise damaged(path, STRUCTURE, lines[0] if lines else f"the check exited with status {done.returncode}")
    _SURVIVED.add(key)


def _main(path: str) -> int:
    """The child: verify every checksum the file has; print the first problem; 0 when intact
    (FOREIGN, with the reason printed, for a file expclip did not write)."""
    from expclip.base.errors import ExpclipError
    from expclip.cache import legacy  # this module as the parent's code knows it (not __main__)
    from expclip.cache.verify import verify_cache

    legacy._SURVIVED.add(_identity(Path(path)))  # the child is the one that takes the risk
    try:
        found = verify_cache(Path(path))
    except NotACache as e:
        print(e.reason)
        return FOREIGN
    except ExpclipError as e:
        print(e)
        return 1
    if not found.ok:
        print(found.problems[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
