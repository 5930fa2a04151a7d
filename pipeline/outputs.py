"""Output paths checked at the command line, before any work: a command never computes and then cannot write.

`writable` creates the folder a command would create anyway, then really
creates and removes a probe file in it: permission bits do not tell (root
writes through them; a read-only mount, a full disk or a quota refuses it
anyway), only a write does. The probe is named like the temporaries of
`expclip.cache.atomic`, so a killed process's leftover is recognised and removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import temporary_name

PROBE = ".expclip-write-check"


def writable(path: Path, option: str, *, folder: bool = False, create: bool = True) -> Path:
    """Check that `option`'s file `path` (or folder, with `folder=True`) can be written; returns `path`.

    `create`: make the target folder (and its parents) when missing, as the
    command would; otherwise a missing folder is refused. Any failure is one
    ExpclipError naming the option and the path.
    """
    path = Path(path)
    target = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise ExpclipError(f"{option} {path}: is a file, not a folder")
    if not folder and path.is_dir():
        raise ExpclipError(f"{option} {path}: is a folder; give a file name")
    if not target.is_dir():
        if not create:
            raise ExpclipError(f"{option} {path}: folder {target} does not exist")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExpclipError(f"{option} {path}: cannot create the folder {target} ({_reason(e)})") from None
    probe = temporary_name(target / PROBE)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise ExpclipError(f"{option} {path}: cannot write in {target} ({_reason(e)})") from None
    return path


def _reason(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)
