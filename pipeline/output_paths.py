"""Output paths checked at the command line, before any work: a command never computes and then cannot write.

`writable` creates the folder a command would create anyway, then really
creates and removes a probe file in it: permission bits do not tell (root
writes through them; a read-only mount, a full disk or a quota refuses it
anyway), only a write does. The probe is named like the temporaries of
`expclip.cache.atomic`, so a killed process's leftover is recognised and removed.

An output never replaces an input (`inputs`: what the command reads, by the
option or argument that names it). Two paths are one file when they resolve
to the same path or share device and inode (a symbolic or hard link). A file
output is refused when it is an input. A folder output is refused when a
file already in it that the command would write (`writes`: glob patterns,
relative to the folder, of the names it writes; by default anything in it)
is an input. So a folder that holds inputs can still take outputs under other
names (`predict photos/ --annotate photos/` writes `x.jpg.png` beside
`x.jpg`). Folders given as inputs count as themselves; a command whose outputs
could land on the files inside one lists those files (predict expands its
folders). `distinct` refuses two outputs of one command that are one file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import followed, temporary_name

PROBE = ".expclip-write-check"
Inputs = Mapping[str, Iterable[Path | None]]  # option or argument name -> the paths it names (None: not given)


def writable(path: Path, option: str, *, folder: bool = False, create: bool = True, inputs: Inputs | None = None,
             writes: Iterable[str] = ("**/*",)) -> Path:
    """Check that `option`'s file `path` (or folder, with `folder=True`) can be written; returns `path`.

    `create`: make the target folder (and its parents) when missing, as the
    command would; otherwise a missing folder is refused. `inputs` and
    `writes`: no output may be an input (see the module's rule), checked
    before anything is created. Any failure is one ExpclipError naming the
    option and the path.
    """
    path = Path(path)
    target = path if folder else followed(path).parent  # a link is written through, beside its target
    if folder and path.exists() and not path.is_dir():
        raise ExpclipError(f"{option} {path}: is a file, not a folder")
    if not folder and path.is_dir():
        raise ExpclipError(f"{option} {path}: is a folder; give a file name")
    if inputs:
        _spare_inputs(path, option, folder, inputs, writes)
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


def head_paths(head: Path | None) -> list[Path]:
    """The files a `--head` (or `--init-from`) option reads: the path given, and a stem's two files."""
    if head is None:
        return []
    from expclip.stages.shared.heads import head_files  # torch: only for commands that load a head anyway

    return [Path(head), *head_files(Path(head))]


Files = Iterable[tuple[str, Path | None]]  # (option, path) pairs; None: not asked for
Folders = Iterable[tuple[str, Path | None, Iterable[str]]]  # (option, path, the names it writes there)


def check_outputs(inputs: Inputs | None = None, *, files: Files = (), folders: Folders = (),
                  create: bool = False) -> None:
    """Every output of a command, checked in one call before any work: no two files are one file, each file
    can be written (its folder made first with `create`, else it must exist) and each folder too (made when
    missing), none replacing an input."""
    files = list(files)
    distinct(files)
    for option, path in files:
        if path is not None:
            writable(path, option, create=create, inputs=inputs)
    for option, path, writes in folders:
        if path is not None:
            writable(path, option, folder=True, inputs=inputs, writes=writes)


def distinct(outputs: Iterable[tuple[str, Path | None]]) -> None:
    """Refuse two outputs of one command, (option, path) pairs, that name one file (the second would replace
    the first)."""
    named = [(option, Path(path)) for option, path in outputs if path is not None]
    for k, (option, path) in enumerate(named):
        for other, earlier in named[:k]:
            if _same(path, earlier):
                raise ExpclipError(
                    f"{option} {path}: the same file as {other} {earlier}; give each output its own path"
                )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _same(a: Path, b: Path) -> bool:
    """One file: the same resolved path, or the same device and inode (a hard link, a link a resolve missed)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    found = _identity(a)
    return found is not None and found == _identity(b)


def _spare_inputs(path: Path, option: str, folder: bool, inputs: Inputs, writes: Iterable[str]) -> None:
    """The module's rule for one output; each input is looked at once (stat), however many the command reads."""
    given = [(name, Path(p)) for name, paths in inputs.items() for p in paths if p is not None]
    by_path = {os.path.realpath(p): (name, p) for name, p in given}
    by_inode = {i: (name, p) for name, p in given if (i := _identity(p)) is not None}

    def which(candidate: Path) -> tuple[str, Path] | None:
        identity = _identity(candidate)
        return by_path.get(os.path.realpath(candidate)) or (by_inode.get(identity) if identity else None)

    if not folder:
        hit = which(path)
        if hit is not None:
            raise ExpclipError(f"{option} {path}: the same file as the input {hit[0]} {hit[1]}; "
                               "writing it would destroy it: give another path")
        return
    if not path.is_dir():
        return  # nothing in it yet, so nothing to replace
    for pattern in writes:
        for candidate in sorted(path.glob(pattern)):
            hit = which(candidate) if candidate.is_file() else None
            if hit is not None:
                raise ExpclipError(f"{option} {path}: would write {candidate}, the same file as the input "
                                   f"{hit[0]} {hit[1]}; give another folder")


def _reason(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)
