"""Who may write a cache: one run that merges, or any number of `--part` runs beside each other.

`CACHE.h5.lock` is locked with `flock`: exclusively by a run that will merge
(a plain `expclip extract`, or rank 0 of a torchrun job), shared by `--part`
runs, which only add shard files. The kernel (or the NFS lock manager) drops
the lock when its process dies, so a killed run never blocks the next one;
no one waits either: a run that cannot lock refuses at once, naming the
holders. Each holder adds one line (host, pid, start time, mode) to the file;
an exclusive holder first empties it, and removes the file when done.

Because every writer holds the lock, an exclusive holder knows no other
writer is alive anywhere, so it may remove any temporary file left in the
partial folder, also those of other hosts (expclip.cache.writer).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import ensure_folder, host_name, process_alive
from expclip.cache.format import beside

UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(cache: Path) -> Path:
    return beside(cache, ".lock")


class CacheLock:
    """`with CacheLock(cache, shared=False) as lock:`; `lock.supported` is False where the filesystem has no locks."""

    def __init__(self, cache: Path, shared: bool = False):
        self.cache, self.shared = Path(cache), shared
        self.path = lock_path(self.cache)
        self.fd: int | None = None
        self.supported = True

    def __enter__(self) -> CacheLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> CacheLock:
        """Lock now or raise one ExpclipError naming the holders; never waits."""
        ensure_folder(self.path.parent)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ExpclipError(f"{self.path}: cannot write ({e.strerror})") from None
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ExpclipError(self._refusal()) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in UNSUPPORTED:
                    raise
                self.supported = False
                self.path.unlink(missing_ok=True)  # a lock file that locks nothing would only mislead
                return self
            if self._still_named(fd):
                break
            os.close(fd)  # its last exclusive holder removed the file after we opened it: lock the new one
        self.fd = fd
        record = {"host": host_name(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "mode": "shared" if self.shared else "exclusive"}
        try:
            if not self.shared:
                os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, (json.dumps(record) + "\n").encode())
        except OSError:
            pass  # a full disk: the record only names holders; the run's own space check says the rest
        return self

    def _still_named(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self.fd is None:
            return
        if not self.shared:
            self.path.unlink(missing_ok=True)  # while still locked: no one can take a file that is going away
        os.close(self.fd)  # drops the lock
        self.fd = None

    def holders(self) -> list[dict]:
        """The recorded holders that may still run (this host's dead pids left out)."""
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            try:
                record = json.loads(line)
                host, pid = str(record["host"]), int(record["pid"])
            except (ValueError, KeyError, TypeError):
                continue
            if host != host_name() or process_alive(pid):
                found.append(record)
        return found

    def _refusal(self) -> str:
        """Why this run cannot start, with who holds the lock and what to do."""
        holders = self.holders()
        named = "; ".join(f"pid {h['pid']} on {h['host']} since {h.get('since', '?')}" for h in holders)
        parts = holders and all(h.get("mode") == "shared" for h in holders)
        who = (f"`expclip extract --part` runs ({named}) are" if parts
               else f"another `expclip extract` ({named or 'holder unknown'}) is")
        then = ("wait for them to finish, then run without --part to merge" if parts and not self.shared
                else "wait for it to finish (it merges the cache), or stop it: a stopped run resumes")
        return f"{self.cache}: {who} writing this cache (lock {self.path}); {then}"
