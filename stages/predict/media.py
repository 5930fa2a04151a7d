"""What `predict` reads: image files, folders, video files and frame folders, as pictures with their place.

A video is decoded with OpenCV (`cv2.VideoCapture`); a frame folder is a clip
whose frames are its image files in sorted order (the layout clip lists use).
Folders given as INPUT are walked for images and videos unless they are frame
folders (`frame_folders=True`), once per run (`listing`). Clips are scored per frame (every `every`-th
frame) and as a whole by the paper's protocol: the middle frames of 16 equal
segments (`protocol.frame_indices`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from expclip.base.errors import ExpclipError
from expclip.stages.encoders.images import IMAGE_SUFFIXES, DecodeError, load_image

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


class Unreadable(ExpclipError):
    """One input that cannot be decoded: `predict` skips and records it (`reason`) and keeps the others."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Clip:
    """A video file or a frame folder: its frame count and a way to read frame i."""

    path: Path
    frames: list[Path] | None = None  # a frame folder's files; None for a video file
    fps: float | None = None  # a frame folder's frame rate when told (--fps); a video's is its container's

    def probe(self) -> tuple[int, float | None]:
        """(frame count, frames per second: None when unknown) from a video's header, or a frame folder's."""
        if self.frames is not None:
            return len(self.frames), self.fps
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise Unreadable(self.path, "cannot be opened as a video")
            fps = capture.get(cv2.CAP_PROP_FPS)
            return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), fps if 0 < fps < float("inf") else None
        finally:
            capture.release()

    def read(self, wanted: list[int]) -> Iterator[tuple[int, Image.Image]]:
        """(frame index, picture) for each wanted index that can be decoded, in order."""
        if self.frames is not None:
            for i in wanted:
                try:
                    image = picture(self.frames[i])
                except Unreadable as e:  # the clip is the input that fails, as a video with a broken stream
                    raise Unreadable(self.path, f"frame {self.frames[i].name} {e.reason}") from None
                yield i, image
            return
        import cv2

        capture, targets, i = cv2.VideoCapture(str(self.path)), set(wanted), 0
        try:
            while targets and i <= max(targets):
                ok, bgr = capture.read()
                if not ok:
                    break
                if i in targets:
                    yield i, Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    targets.discard(i)
                i += 1
        finally:
            capture.release()


def picture(path: Path) -> Image.Image:
    """A picture file decoded as extract decodes it; an unreadable one is a one-line error naming it."""
    try:
        return load_image(path)
    except (DecodeError, OSError) as e:
        raise Unreadable(path, f"cannot be read as an image ({e})") from None


@dataclass
class Given:
    """One INPUT argument and the pictures and clips it names or holds, in sorted order."""

    path: Path
    walked: bool  # a folder walked for pictures and videos (not a file, not a frame folder)
    found: list[Path | Clip]


@dataclass
class Listing:
    """INPUT listed once: the output check, the annotation names and the run all read this, so no folder is walked
    again (a large folder costs one walk, and all three see the same files)."""

    given: list[Given]

    def items(self) -> list[Path | Clip]:
        """Every picture file and clip, argument by argument."""
        return [item for g in self.given for item in g.found]

    def files(self) -> list[Path]:
        """Every file predict reads (a frame folder and its frames): what an output must not replace."""
        return [path for item in self.items()
                for path in ([item.path, *(item.frames or [])] if isinstance(item, Clip) else [item])]


def listing(paths: list[Path], *, frame_folders: bool = False) -> Listing:
    """Each picture file, video and frame folder named or found in the named folders, each folder listed once."""
    given = []
    for path in map(Path, paths):
        if not path.exists():
            raise ExpclipError(f"{path}: no such file or folder")
        if path.is_dir() and frame_folders:
            frames = _files(path, IMAGE_SUFFIXES, below=False)
            if not frames:
                raise ExpclipError(f"{path}: a frame folder with no image files")
            given.append(Given(path, False, [Clip(path, frames)]))
        elif path.is_dir():
            found = _files(path, IMAGE_SUFFIXES | VIDEO_SUFFIXES, below=True)
            if not found:
                raise ExpclipError(f"{path}: no image or video files")
            given.append(Given(path, True, [_item(p) for p in found]))
        else:
            given.append(Given(path, False, [_item(path)]))
    return Listing(given)


def _files(folder: Path, suffixes: set[str], *, below: bool) -> list[Path]:
    """The files in `folder` (and `below` it: its subfolders, not followed through links) with one of `suffixes`,
    sorted; os.walk lists each folder once (pathlib's rglob lists each twice)."""
    found: list[Path] = []
    for top, folders, names in os.walk(folder):
        found += [Path(top) / name for name in names if Path(name).suffix.lower() in suffixes]
        if not below:
            folders.clear()
    return sorted(found)


def _item(path: Path) -> Path | Clip:
    """A named or found file: a video is a clip, a picture itself."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return Clip(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path
    raise ExpclipError(f"{path}: neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a video "
                       f"({', '.join(sorted(VIDEO_SUFFIXES))})")
