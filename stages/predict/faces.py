"""Faces in a picture: a detector whose weights ship inside a package, and crops with a margin.

`haar` (default): OpenCV 4.x's bundled frontal-face Haar cascade
(`cv2.data.haarcascades`; OpenCV 5 dropped `CascadeClassifier`, hence
`opencv-python-headless<5`). `yunet`: OpenCV's YuNet, far better on real photos,
from an ONNX file the user supplies (no package ships it). `none`: the whole
picture is one face (pre-cropped faces). Crops add MARGIN of the box's size on
every side, squared, as face crops in FER datasets include some context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from expclip.base.errors import ExpclipError
from expclip.stages.shared.vocabulary import DETECTORS

MARGIN = 0.2
MIN_FACE = 24  # pixels: smaller detections are noise at Haar's scales


@dataclass(frozen=True)
class Box:
    """A face: left, top, width, height in pixels of the picture, and the detector's confidence (None where the
    detector gives none: Haar's cascade answers yes or no, and `none` detects nothing)."""

    x: int
    y: int
    w: int
    h: int
    score: float | None = None

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class Detector:
    """`detect(picture) -> boxes`, largest first."""

    def __init__(self, kind: str = "haar", model: Path | None = None) -> None:
        if kind not in DETECTORS:
            raise ExpclipError(f"--detector {kind!r}: choose one of {', '.join(DETECTORS)}")
        self.kind = kind
        if kind == "yunet" and (model is None or not Path(model).is_file()):
            raise ExpclipError(f"--detector yunet needs --detector-model FILE.onnx (got {model})")
        if kind == "none":
            return
        import cv2

        if kind == "haar":
            if not hasattr(cv2, "CascadeClassifier"):
                raise ExpclipError(f"OpenCV {cv2.__version__} has no Haar cascades; install opencv-python-headless<5")
            self.cascade = cv2.CascadeClassifier(
                str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
            )
        else:
            self.model = Path(model)
            try:
                self.yunet = cv2.FaceDetectorYN.create(str(model), "", (320, 320))
            except cv2.error as e:
                raise ExpclipError(
                    f"--detector-model {model}: OpenCV cannot read it as an ONNX model ({_reason(e)})"
                ) from None

    def detect(self, picture: Image.Image) -> list[Box]:
        width, height = picture.size
        if self.kind == "none":
            return [Box(0, 0, width, height)]
        import cv2

        rgb = np.asarray(picture.convert("RGB"))
        if self.kind == "haar":
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE))
            boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
        else:
            self.yunet.setInputSize((width, height))
            try:
                _, found = self.yunet.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            except cv2.error as e:  # an ONNX file without YuNet's twelve outputs
                raise ExpclipError(f"--detector-model {self.model}: not a YuNet face detector ({_reason(e)})") from None
            boxes = [
                Box(int(f[0]), int(f[1]), int(f[2]), int(f[3]), float(f[-1]))
                for f in (found if found is not None else [])
            ]
        return sorted(boxes, key=lambda b: -b.w * b.h)


def _reason(error: Exception) -> str:
    """OpenCV's own line of a cv2.error (its message is several lines of C++ context)."""
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line]
    return lines[-1].split("error:", 1)[1].strip() if lines else str(error).strip()


def crop(picture: Image.Image, box: Box, margin: float = MARGIN) -> Image.Image:
    """The box grown by `margin` of its size on each side, squared around its centre, clipped to the picture."""
    side = max(box.w, box.h) * (1 + 2 * margin)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(picture.width, round(cx + side / 2)), min(picture.height, round(cy + side / 2))
    return picture.crop((left, top, right, bottom))
