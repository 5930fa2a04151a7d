"""Folders that refuse writes for real: read-only, or full, for root as for anyone.

Root writes through permission bits, so for root both are tmpfs mounts
(read-only, or a few hundred KiB); a non-root user gets a mode-555 folder and
the full-disk tests are skipped (mounting needs root), as they are where
mounting is refused.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0


class Disk:
    """A tmpfs mounted on `path`; `remount("ro")` or `remount("size=4m")` changes it in place."""

    def __init__(self, path: Path, options: str):
        self.path = path
        path.mkdir(exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): root writes through permissions, "
                        "so a read-only or full folder must be a mount")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    """mount(options) -> Disk; every mount is undone at teardown."""
    if not ROOT:
        pytest.skip("a small or read-only filesystem is a tmpfs mount, which needs root")
    mounted: list[Disk] = []

    def mount(options: str, name: str = "disk") -> Disk:
        mounted.append(Disk(tmp_path / name, options))
        return mounted[-1]

    yield mount
    for d in reversed(mounted):
        d.unmount()


@pytest.fixture
def lockable(tmp_path):
    """(folder, lock): a writable folder and what makes it read-only in place, as another process could.

    Root writes through permission bits, so for root the folder is a tmpfs
    remounted read-only; anyone else gets a folder whose write bit is removed.
    """
    folder = tmp_path / "lockable"
    if not ROOT:
        folder.mkdir()
        yield folder, lambda: folder.chmod(0o555)
        folder.chmod(0o755)
        return
    mounted = Disk(folder, "size=1m")
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        mounted.unmount()


@pytest.fixture
def read_only(lockable):
    folder, lock = lockable
    lock()
    return folder


REFUSED = ("Read-only file system", "Permission denied")  # root on a read-only mount; anyone else on mode 555
