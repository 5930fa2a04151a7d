"""Synthetic "faces" for tests, the demo and benchmarks: no dataset download needed.

Each class has its own drawn expression (mouth curve and opening, brow tilt,
eye opening, asymmetry) so a head can learn something; per-image jitter and
noise from a seeded generator keep images distinct and runs reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from expclip.stages.shared.protocol import canonical_class, class_order


@dataclass(frozen=True)
class Expression:
    """Drawing parameters, each roughly in [-1, 1.5]; 0 is a neutral face."""

    curve: float  # mouth corners up (+) or down (-)
    opening: float  # mouth opening, 0 = closed
    brow: float  # inner brow ends raised (+) or lowered (-)
    eyes: float  # eye opening relative to neutral (1)
    smirk: float  # one mouth corner raised, the other not


EXPRESSIONS = {
    "Happiness": Expression(1.0, 0.3, 0.0, 0.7, 0.0),
    "Sadness": Expression(-1.0, 0.0, 0.9, 0.8, 0.0),
    "Neutral": Expression(0.0, 0.0, 0.0, 1.0, 0.0),
    "Anger": Expression(-0.4, 0.1, -1.0, 0.9, 0.0),
    "Surprise": Expression(0.0, 1.2, 0.4, 1.5, 0.0),
    "Disgust": Expression(-0.5, 0.2, -0.6, 0.5, -0.6),
    "Fear": Expression(-0.4, 0.7, 1.0, 1.5, 0.0),
    "Contempt": Expression(0.0, 0.0, -0.2, 0.8, 1.0),
    "Anxiety": Expression(-0.2, 0.2, 0.6, 1.3, 0.3),
    "Helplessness": Expression(-0.7, 0.3, 1.2, 0.7, 0.0),
    "Disappointment": Expression(-0.8, 0.0, 0.3, 0.6, -0.3),
}


def expression_of(name: str) -> Expression:
    """The drawn expression of a class name: canonical names and synonyms, else one derived from the name."""
    canonical = canonical_class(name)
    if canonical is not None:
        return EXPRESSIONS[canonical]
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    curve, opening, brow, eyes, smirk = rng.uniform(-1.0, 1.0, 5)
    return Expression(float(curve), float(abs(opening)), float(brow), float(1 + 0.5 * eyes), float(smirk))


def draw_face(expression: Expression, size: int, rng: np.random.Generator, intensity: float = 1.0) -> Image.Image:
    """One RGB face of `size` pixels with random placement, colours and noise."""
    e = expression
    bg = tuple(int(v) for v in rng.integers(20, 235, 3))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    s = size * rng.uniform(0.85, 1.0)
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    skin = tuple(int(v) for v in rng.normal((215, 175, 140), 20).clip(0, 255))
    draw.ellipse([cx - 0.36 * s, cy - 0.45 * s, cx + 0.36 * s, cy + 0.45 * s], fill=skin)
    k = intensity * rng.uniform(0.8, 1.2)
    dark = (40, 30, 30)
    for side in (-1, 1):
        ex, ey = cx + side * 0.15 * s, cy - 0.1 * s
        eye_h = max(0.01, 0.045 * s * (1 + (e.eyes - 1) * k))
        draw.ellipse([ex - 0.07 * s, ey - eye_h, ex + 0.07 * s, ey + eye_h], fill=(250, 250, 250), outline=dark)
        draw.ellipse([ex - 0.025 * s, ey - min(eye_h, 0.025 * s), ex + 0.025 * s, ey + min(eye_h, 0.025 * s)],
                     fill=dark)
        brow_y = ey - 0.1 * s - 0.03 * s * max(e.eyes - 1, 0) * k
        inner, outer = ex - side * 0.07 * s, ex + side * 0.08 * s
        draw.line([(inner, brow_y - e.brow * 0.05 * s * k), (outer, brow_y)], fill=dark, width=max(1, size // 32))
    xs = np.linspace(-1.0, 1.0, 9)
    bow = 1 - xs**2
    upper = cy + 0.22 * s - (e.curve * (1 - bow) + e.smirk * (xs > 0) * xs) * 0.06 * s * k
    lower = upper + e.opening * bow * 0.12 * s * k
    px = cx + xs * 0.14 * s
    points = list(zip(px, upper)) + list(zip(px[::-1], lower[::-1]))
    if e.opening * k > 0.05:
        draw.polygon(points, fill=(90, 20, 30), outline=dark)
    else:
        draw.line(list(zip(px, upper)), fill=(120, 30, 40), width=max(1, size // 24))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_faces(folder: Path, classes: list[str], per_class: int, *, size: int = 64, seed: int = 0) -> list[Path]:
    """Write `per_class` faces of each class as folder/<class>/<i>.png; returns the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        expression = expression_of(name)
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = Path(folder) / name / f"{i}.png"
            draw_face(expression, size, rng).save(path)
            paths.append(path)
    return paths


def write_clips(folder: Path, labels: list[int], *, frames: list[int], size: int = 48, seed: int = 0) -> Path:
    """Write clips folder/clips/<i:05d>/<f:05d>.png (f from 0) and the official annotation file.

    Clip i shows class `class_order()[labels[i]]` over `frames[i]` frames, the
    expression growing from onset to apex. Returns folder/annotations.txt,
    one `ABS_CLIP_DIR num_frames label` line per clip (0-based labels).
    """
    names = class_order()
    if len(frames) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(frames)} frame counts")
    if any(not 0 <= label < len(names) for label in labels):
        raise ValueError(f"labels must lie in 0..{len(names) - 1} (the canonical class order)")
    rng = np.random.default_rng(seed)
    lines = []
    for i, (label, count) in enumerate(zip(labels, frames)):
        clip = (Path(folder) / "clips" / f"{i:05d}").resolve()
        clip.mkdir(parents=True, exist_ok=True)
        clip_seed = int(rng.integers(2**32))
        for f in range(count):
            # The same seed per frame keeps one face; only the expression intensity moves.
            frame_rng = np.random.default_rng(clip_seed)
            intensity = 0.3 + 0.7 * f / max(count - 1, 1)
            draw_face(EXPRESSIONS[names[label]], size, frame_rng, intensity).save(clip / f"{f:05d}.png")
        lines.append(f"{clip} {count} {label}\n")
    annotations = Path(folder) / "annotations.txt"
    annotations.write_text("".join(lines), "utf-8")
    return annotations
