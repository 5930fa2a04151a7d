"""The real photo (matplotlib's sample of Grace Hopper) and the videos made of it that the predict tests read."""

from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
from PIL import Image

from expclip.stages.predict.faces import Box, Detector

PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def small_photo() -> Image.Image:
    """The photo at a quarter of its side (its face ~59 px): Haar's cost grows with the pixels, and the
    videos and frame folders of the predict tests only need a face it finds."""
    return Image.open(PHOTO).convert("RGB").resize((128, 150))


def write_video(path: Path, frames: int | list[Image.Image]) -> Path:
    """An MJPG .avi at 10 fps of these frames, or of the photo shrunk, `frames` frames long."""
    if isinstance(frames, int):
        frames = [small_photo()] * frames
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].size)
    for frame in frames:
        writer.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode(video: Path) -> list[Image.Image]:
    decoded, pictures = cv2.VideoCapture(str(video)), []
    while True:
        ok, bgr = decoded.read()
        if not ok:
            break
        pictures.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    decoded.release()
    return pictures


def detect_each(pictures: list[Image.Image]) -> list[list[Box]]:
    """Haar's boxes for each picture, largest first; a picture identical to one already seen (the videos repeat
    a few frames) is looked up rather than detected again."""
    detector, found = Detector("haar"), {}
    for picture in pictures:
        key = (picture.size, picture.tobytes())
        if key not in found:
            found[key] = detector.detect(picture)
    return [found[(p.size, p.tobytes())] for p in pictures]
