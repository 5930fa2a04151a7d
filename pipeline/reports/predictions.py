"""predict's records as a rich table, CSV, and annotated pictures / video timelines (`--annotate DIR`).

CSV: one row per record, columns `kind, file, frame, face, track, x, y, w, h, top`, then
`p_<class>` per class, then `reason` (why a `failed` input was skipped), `seconds`,
`score` (the detector's), then the provenance's fields (`ZeroShotFER.provenance`,
the same on every row; classes comma-joined); empty cells where a field does not
apply. Annotations:
each picture with its faces boxed, each box in its face's colour and labelled
`#<face> <top> <p>` on a filled band, text sized to the picture, as DIR/<name>.png;
each clip as DIR/<name>.timeline.png (see `reports.timeline`).

<name> keeps the input's relative path and its extension, so no two inputs
share an annotation (`a/001.jpg` and `b/001.jpg`, `x.jpg` and `x.png`): with
one INPUT, the path inside it (a folder) or its name (a file, a video, a frame
folder); with several, behind each argument's own name (`predict a/ b/` writes
DIR/a/001.jpg.png and DIR/b/001.jpg.png), or behind as many of its last path
components as it takes to tell the arguments apart (`x/photos`, `y/photos`).
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib import font_manager
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import ensure_folder
from expclip.console import escape
from expclip.reports.files import CsvTable, write_png
from expclip.reports.timeline import timeline_figure
from expclip.stages.predict.media import Clip, Listing, picture

FIELDS = ["kind", "file", "frame", "face", "track", "x", "y", "w", "h", "top"]
LABEL_SHARE, LABEL_MIN = 40, 12  # label height: 1/40 of the longer side, at least 12 px
# Distinct on photos and to colour-blind eyes (Okabe-Ito); face i gets PALETTE[i % 6].
PALETTE = ((213, 94, 0), (0, 114, 178), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))


def table(records: list[dict]) -> Table:
    found = Table(title="expressions (zero-shot)")
    for name in ("file", "frame", "face", "box", "top", "p(top)"):
        found.add_column(name, justify="right" if name in ("frame", "face", "p(top)") else "left")
    for r in records:
        if r["kind"] == "failed":
            found.add_row(escape(Path(r["file"]).name), "skipped", "", escape(r["reason"]), "", "")
            continue
        if r["kind"] == "face":
            where, face, box = (
                "" if r["frame"] is None else str(r["frame"]),
                str(r["face"]),
                " ".join(map(str, r["box"])),
            )
        else:
            where = "whole clip" if r["kind"] == "clip" else f"track {r['track']}"
            face = box = ""
        found.add_row(
            escape(Path(r["file"]).name), where, face, box, escape(r["top"]), f"{r['probabilities'][r['top']]:.3f}"
        )
    return found


def csv_table(records: list[dict], classes: list[str], provenance: dict | None = None) -> CsvTable:
    """The CSV described in the module docstring, for `files.write_csv`."""
    provenance = {k: ",".join(v) if isinstance(v, list) else v for k, v in (provenance or {}).items()}
    rows = []
    for r in records:
        box = r.get("box") or [None] * 4
        p = [r["probabilities"][c] for c in classes] if "probabilities" in r else [None] * len(classes)
        more = [r.get("reason"), r.get("seconds") if r["kind"] == "face" else None, r.get("score")]
        rows.append([r["kind"], r["file"], r.get("frame"), r.get("face"), r.get("track"), *box, r.get("top"), *p,
                     *more, *provenance.values()])
    return FIELDS + [f"p_{c}" for c in classes] + ["reason", "seconds", "score", *provenance], rows


def annotation_names(listed: Listing) -> dict[str, Path]:
    """Each input file (as records name it) -> its annotation's path relative to DIR (see the module's rule).

    Known before any picture is read, so `--annotate` is checked against the
    inputs first; two inputs that would share an annotation (one file named
    by two spellings) are one ExpclipError.
    """
    paths = [given.path for given in listed.given]
    prefixes = _prefixes(paths) if len(paths) > 1 else [None]
    names: dict[str, Path] = {}
    taken: dict[Path, str] = {}
    for given, prefix in zip(listed.given, prefixes, strict=True):
        path = given.path
        for item in given.found:
            file = item.path if isinstance(item, Clip) else item
            if str(file) in names:
                continue  # named again by another argument: one file, one annotation
            if given.walked:
                name = file.relative_to(path) if prefix is None else prefix / file.relative_to(path)
            else:
                name = prefix or Path(os.path.basename(os.path.abspath(file)))
            name = name.with_name(name.name + (".timeline.png" if isinstance(item, Clip) else ".png"))
            if name in taken:
                raise ExpclipError(f"--annotate: {taken[name]} and {file} would both be written as {name}; "
                                   "give each input once")
            names[str(file)], taken[name] = name, str(file)
    return names


def _prefixes(paths: list[Path]) -> list[Path]:
    """Each argument's last k path components, for the least k that tells every argument apart."""
    parts = [Path(os.path.abspath(p)).parts[1:] for p in paths]
    for k in range(1, max(map(len, parts)) + 1):
        tails = [Path(*q[-k:]) for q in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [Path(*q) for q in parts]  # one path given twice: `annotation_names` refuses it


def annotate(records: list[dict], classes: list[str], folder: Path, names: dict[str, Path]) -> list[Path]:
    """Boxed pictures and clip timelines in `folder`, each at its `annotation_names` path; returns the files written."""
    written = []
    by_file: dict[str, list[dict]] = {}  # grouped once: a folder of many pictures is not scanned per picture
    for r in records:
        by_file.setdefault(r["file"], []).append(r)
    for file in sorted(by_file):
        found = by_file[file]
        if any(r["kind"] == "face" and r["frame"] is None for r in found):
            drawn: Image.Image | Figure | None = boxed(picture(Path(file)), found)
        else:
            drawn = timeline_figure(file, found, classes)
        if drawn is not None:  # a failed input, or a clip without a face
            ensure_folder((folder / names[file]).parent)
            written.append(write_png(drawn, folder / names[file]))
    return written


def label_size(size: tuple[int, int]) -> int:
    """Label text height in pixels: a fixed share of the picture's longer side, so a label reads the same on a
    thumbnail and on a 24-megapixel photo (never below LABEL_MIN, the smallest legible size)."""
    return max(LABEL_MIN, round(max(size) / LABEL_SHARE))


def face_colour(face: int) -> tuple[int, int, int]:
    return PALETTE[face % len(PALETTE)]


def ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on a light band, white on a dark one (ITU-R BT.601 luma), so every label reads."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def boxed(image: Image.Image, records: list[dict]) -> Image.Image:
    """A copy of `image` with each face record's box, and a label `#<face> <top> <p>` on a filled band in the box's
    colour above it (inside the box's top when the picture ends there)."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), label_size(image.size))
    line = max(2, round(font.size / 8))
    for r in records:
        x, y, w, h = r["box"]
        colour = face_colour(r["face"])
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=line)
        text = f"#{r['face']} {r['top']} {r['probabilities'][r['top']]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 2 * line, bottom - top + 2 * line
        at_x = max(0, min(x, image.width - width))
        at_y = y - height if y >= height else y
        draw.rectangle((at_x, at_y, at_x + width, at_y + height), fill=colour)
        draw.text((at_x + line - left, at_y + line - top), text, fill=ink(colour), font=font)
    return image
