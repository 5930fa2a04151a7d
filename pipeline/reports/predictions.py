"""predict's records as a rich table, CSV, and annotated pictures / video timelines (`--annotate DIR`).

CSV: one row per record, columns `kind, file, frame, face, track, x, y, w, h, top`, then
`p_<class>` per class, then `reason` (why a `failed` input was skipped); empty cells
where a field does not apply. Annotations:
each picture with its faces boxed and labelled `top p`, as DIR/<name>.png;
each clip as DIR/<name>.timeline.png: per-frame probabilities of each face
track (the TIMELINE_TRACKS seen most), one panel per track, one line per class.

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

from matplotlib.figure import Figure
from PIL import ImageDraw
from rich.table import Table

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import ensure_folder
from expclip.console import escape
from expclip.reports.files import CsvTable, write_png
from expclip.stages.predict.media import Clip, inputs, picture

FIELDS = ["kind", "file", "frame", "face", "track", "x", "y", "w", "h", "top"]
TIMELINE_TRACKS = 4


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


def csv_table(records: list[dict], classes: list[str]) -> CsvTable:
    """The CSV described in the module docstring, for `files.write_csv`."""
    rows = []
    for r in records:
        box = r.get("box") or [None] * 4
        p = [r["probabilities"][c] for c in classes] if "probabilities" in r else [None] * len(classes)
        rows.append([r["kind"], r["file"], r.get("frame"), r.get("face"), r.get("track"), *box, r.get("top"), *p,
                     r.get("reason")])
    return FIELDS + [f"p_{c}" for c in classes] + ["reason"], rows


def annotation_names(paths: list[Path], *, frame_folders: bool = False) -> dict[str, Path]:
    """Each input file (as records name it) -> its annotation's path relative to DIR (see the module's rule).

    Known before any picture is read, so `--annotate` is checked against the
    inputs first; two inputs that would share an annotation (one file named
    by two spellings) are one ExpclipError.
    """
    prefixes = _prefixes(paths) if len(paths) > 1 else [None]
    names: dict[str, Path] = {}
    taken: dict[Path, str] = {}
    for path, prefix in zip(map(Path, paths), prefixes, strict=True):
        walked = path.is_dir() and not frame_folders
        for item in inputs([path], frame_folders=frame_folders):
            file = item.path if isinstance(item, Clip) else item
            if str(file) in names:
                continue  # named again by another argument: one file, one annotation
            if walked:
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
    pictures = sorted({r["file"] for r in records if r["kind"] == "face" and r["frame"] is None})
    for file in pictures:
        image = picture(Path(file)).copy()
        draw = ImageDraw.Draw(image)
        for r in by_file[file]:
            x, y, w, h = r["box"]
            draw.rectangle((x, y, x + w, y + h), outline=(255, 40, 40), width=max(2, w // 60))
            draw.text((x + 3, y + 3), f"{r['top']} {r['probabilities'][r['top']]:.2f}", fill=(255, 40, 40))
        target = folder / names[file]
        ensure_folder(target.parent)
        write_png(image, target)
        written.append(target)
    for file in sorted({r["file"] for r in records if r["kind"] != "face" or r["frame"] is not None}):
        faces = [r for r in by_file[file] if r["kind"] == "face"]
        by_track = {t: sorted((r for r in faces if r["track"] == t), key=lambda r: r["frame"])
                    for t in sorted({r["track"] for r in faces})[:TIMELINE_TRACKS]}  # track 0 = seen most
        if by_track:
            ensure_folder((folder / names[file]).parent)
            written.append(_timeline(file, by_track, classes, folder / names[file]))
    return written


def _timeline(file: str, by_track: dict[int, list[dict]], classes: list[str], target: Path) -> Path:
    fig = Figure(figsize=(8, 0.8 + 2.2 * len(by_track)), layout="constrained")
    axes = fig.subplots(len(by_track), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (track, frames) in zip(axes, by_track.items()):
        x = [r["frame"] for r in frames]
        for c in classes:
            ax.plot(x, [r["probabilities"][c] for r in frames], label=c, marker="." if len(x) < 50 else None)
        ax.set(ylabel="probability", title=f"{Path(file).name}: track {track}", ylim=(0, 1))
    axes[-1].set_xlabel("frame")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, ncols=min(len(classes), 8), loc="outside lower center")
    return write_png(fig, target)
