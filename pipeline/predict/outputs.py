"""predict's records as a rich table, CSV, and annotated pictures / video timelines (`--annotate DIR`).

CSV: one row per record, columns `kind, file, frame, face, track, x, y, w, h, top`, then
`p_<class>` per class (empty cells where a field does not apply). Annotations:
each picture with its faces boxed and labelled `top p`, as DIR/<file stem>.png;
each clip as DIR/<file stem>.timeline.png: per-frame probabilities of each face
track (the TIMELINE_TRACKS seen most), one panel per track, one line per class.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from matplotlib.figure import Figure
from PIL import ImageDraw
from rich.markup import escape
from rich.table import Table

from expclip.cache.atomic import write_atomically
from expclip.predict.media import picture

FIELDS = ["kind", "file", "frame", "face", "track", "x", "y", "w", "h", "top"]
TIMELINE_TRACKS = 4


def table(records: list[dict]) -> Table:
    found = Table(title="expressions (zero-shot)")
    for name in ("file", "frame", "face", "box", "top", "p(top)"):
        found.add_column(name, justify="right" if name in ("frame", "face", "p(top)") else "left")
    for r in records:
        if r["kind"] == "face":
            where, face, box = "" if r["frame"] is None else str(r["frame"]), str(r["face"]), " ".join(map(str, r["box"]))
        else:
            where = "whole clip" if r["kind"] == "clip" else f"track {r['track']}"
            face = box = ""
        found.add_row(escape(Path(r["file"]).name), where, face, box, escape(r["top"]), f"{r['probabilities'][r['top']]:.3f}")
    return found


def csv_text(records: list[dict], classes: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS + [f"p_{c}" for c in classes])
    for r in records:
        box = r.get("box") or [None] * 4
        values = [r["kind"], r["file"], r.get("frame"), r.get("face"), r.get("track"), *box, r["top"]]
        writer.writerow(["" if v is None else v for v in values] + [r["probabilities"][c] for c in classes])
    return buffer.getvalue()


def write_csv(records: list[dict], classes: list[str], path: Path) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(csv_text(records, classes), "utf-8"))


def annotate(records: list[dict], classes: list[str], folder: Path) -> list[Path]:
    """Boxed pictures and clip timelines in `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    pictures = sorted({r["file"] for r in records if r["kind"] == "face" and r["frame"] is None})
    for file in pictures:
        image = picture(Path(file)).copy()
        draw = ImageDraw.Draw(image)
        for r in (r for r in records if r["file"] == file):
            x, y, w, h = r["box"]
            draw.rectangle((x, y, x + w, y + h), outline=(255, 40, 40), width=max(2, w // 60))
            draw.text((x + 3, y + 3), f"{r['top']} {r['probabilities'][r['top']]:.2f}", fill=(255, 40, 40))
        target = folder / f"{Path(file).stem}.png"
        write_atomically(target, lambda tmp: image.save(tmp, format="PNG"))
        written.append(target)
    for file in sorted({r["file"] for r in records if r["kind"] != "face" or r["frame"] is not None}):
        faces = [r for r in records if r["file"] == file and r["kind"] == "face"]
        by_track = {t: sorted((r for r in faces if r["track"] == t), key=lambda r: r["frame"])
                    for t in sorted({r["track"] for r in faces})[:TIMELINE_TRACKS]}  # track 0 = seen most
        if by_track:
            written.append(_timeline(file, by_track, classes, folder / f"{Path(file).stem}.timeline.png"))
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
    write_atomically(target, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return target
