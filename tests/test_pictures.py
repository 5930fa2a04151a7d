"""Pictures as a user sees them: each rendered in a temporary folder, opened, measured, and checked for what it
should show (the confusion matrices are in test_report.py); the README's copies are small and open."""

from pathlib import Path

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.demo.synthetic import write_faces
from expclip.reports import files
from expclip.reports.predictions import annotate, boxed, face_colour, label_size
from expclip.reports.sheets import Locator, hits_figure
from expclip.reports.timeline import SAMPLED, SMOOTH, timeline_figure
from expclip.stages.shared import protocol

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["happy", "sad", "angry"]


def face(file, index, box, top="sad", p=0.7, frame=None, track=None, **extra) -> dict:
    rest = (1 - p) / 2
    probabilities = {c: (p if c == top else rest) for c in CLASSES}
    return {"kind": "face", "file": str(file), "frame": frame, "face": index, "box": box, "top": top,
            "probabilities": probabilities, **({} if track is None else {"track": track}), **extra}


def band(image: Image.Image, x: int, y: int, colour) -> int:
    """How many pixels of `colour` run upward from (x, y): the height of a label's band."""
    n = 0
    while y - n >= 0 and image.getpixel((x, y - n)) == colour:
        n += 1
    return n


def test_annotate_boxes_each_face_in_its_colour_with_a_label_sized_to_the_picture(tmp_path):
    heights = {}
    for scale in (1, 20):  # 160 x 120 and 3200 x 2400: the same picture, the label the same share of it
        image = Image.new("RGB", (160 * scale, 120 * scale), (128, 128, 128))
        records = [face("p", 0, [40 * scale, 50 * scale, 60 * scale, 60 * scale], "happy", 0.81),
                   face("p", 1, [100 * scale, 0, 50 * scale, 50 * scale], "sad", 0.7)]
        drawn = boxed(image, records)
        assert drawn.size == image.size and image.getpixel((0, 0)) == (128, 128, 128)  # a copy
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), label_size(image.size))
        line = max(2, round(font.size / 8))
        x, y, w, h = records[0]["box"]
        assert drawn.getpixel((x, y + h // 2)) == drawn.getpixel((x + w, y + h // 2)) == face_colour(0)
        assert face_colour(1) != face_colour(0) and drawn.getpixel((100 * scale, 25 * scale)) == face_colour(1)
        heights[scale] = band(drawn, x, y + line - 1, face_colour(0))  # the box's top edge, then the band above it
        left, top, right, bottom = ImageDraw.Draw(drawn).textbbox((0, 0), "#0 happy 0.81", font=font)
        assert heights[scale] == bottom - top + 2 * line + line
        width = right - left + 2 * line
        assert drawn.getpixel((x + width - 1, y - 2 - line)) == face_colour(0)  # the band spans the text
        assert drawn.getpixel((x + width + 1, y - 2 - line)) == (128, 128, 128)
        inked = np.asarray(drawn.crop((x, y - heights[scale] + line, x + width, y - line)))
        assert (inked == (255, 255, 255)).all(axis=-1).sum() > 0  # white text on the dark band
        # face 1 touches the top edge: its band lies inside the box, from its top
        assert drawn.getpixel((100 * scale + 1, line + 1)) == face_colour(1)
    assert heights[1] >= 12 and heights[20] >= 2400 / 40  # readable on a thumbnail, not lost on a big photo

    path = tmp_path / "in" / "p.png"
    path.parent.mkdir()
    Image.new("RGB", (320, 240), (30, 30, 30)).save(path)
    records = [face(path, 0, [100, 80, 90, 90])]
    [written] = annotate(records, CLASSES, tmp_path / "ann", {str(path): Path("p.png.png")})
    with Image.open(written) as shown:
        assert shown.format == "PNG" and shown.size == (320, 240)
        assert shown.convert("RGB").getpixel((100, 120)) == face_colour(0)


def clip_records(file: str, fps: float | None = 25.0, frames: int = 40, seconds: bool = False) -> list[dict]:
    """A clip's records as predict writes them: every frame's faces (two tracks), its clip and track verdicts."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(frames):
        for track in (0, 1) if i % 2 == 0 else (0,):
            r = face(file, track, [10, 10, 40, 40], "happy", float(rng.uniform(0.4, 0.9)), frame=i, track=track)
            if seconds:
                r["seconds"] = i / 25.0
            records.append(r)
    sampled = protocol.frame_indices(frames)
    clip = {"kind": "clip", "file": file, "frames": sampled, "frames_with_a_face": 16,
            "probabilities": {"happy": 0.6, "sad": 0.3, "angry": 0.1}, "top": "happy"}
    if fps is not None:
        clip["fps"] = fps
    tracks = [{"kind": "track", "file": file, "track": t, "frames": [f for f in sampled if t == 0 or f % 2 == 0],
               "boxes": [], "probabilities": {"happy": 0.2, "sad": 0.5, "angry": 0.3}, "top": "sad"} for t in (0, 1)]
    return records + [clip, *tracks]


def test_timeline_in_seconds_with_the_sampled_frames_verdicts_and_a_documented_smoothing(tmp_path):
    records = clip_records("talk.mp4")
    fig = timeline_figure("talk.mp4", records, CLASSES)
    top, bottom = fig.axes[:2]
    assert bottom.get_xlabel() == "seconds"
    sampled = sorted(set(protocol.frame_indices(40)))
    assert len(sampled) == 16
    for ax in (top, bottom):
        assert [line.get_xdata()[0] for line in ax.lines if line.get_gid() == SAMPLED] == [f / 25 for f in sampled]
    assert fig.get_suptitle() == "talk.mp4 — whole clip: happy 0.60"
    assert top.get_title() == "track 0: sad 0.50 (in 16 of 16 sampled frames)"
    assert bottom.get_title() == "track 1: sad 0.50 (in 8 of 16 sampled frames)"
    raw = [r["probabilities"]["happy"] for r in records if r["kind"] == "face" and r["track"] == 1]
    window = np.ones(SMOOTH)
    mean = np.convolve(raw, window, "same") / np.convolve(np.ones(len(raw)), window, "same")  # fewer at the ends
    [line] = [line for line in bottom.lines if line.get_label() == "happy"]
    np.testing.assert_allclose(line.get_ydata(), mean)
    np.testing.assert_allclose(line.get_xdata(), np.arange(0, 40, 2) / 25)
    [faint] = [line for line in bottom.lines if line.get_label() == "_raw happy"]
    np.testing.assert_allclose(faint.get_ydata(), raw)

    untimed = timeline_figure("talk.mp4", clip_records("talk.mp4", fps=None), CLASSES)
    assert untimed.axes[1].get_xlabel() == "frame index (no frame rate recorded)"
    assert [line.get_xdata()[0] for line in untimed.axes[0].lines if line.get_gid() == SAMPLED] == sampled
    timed = timeline_figure("talk.mp4", clip_records("talk.mp4", fps=None, seconds=True), CLASSES)
    assert timed.axes[1].get_xlabel() == "seconds"  # a record's own seconds give the rate
    assert [x.get_xdata()[0] for x in timed.axes[0].lines if x.get_gid() == SAMPLED] == [f / 25 for f in sampled]

    [written] = annotate(records, CLASSES, tmp_path / "ann", {"talk.mp4": Path("talk.mp4.timeline.png")})
    with Image.open(written) as shown:
        assert shown.format == "PNG" and shown.size == (800, round(100 * (0.8 + 2.2 * 2)))


def test_search_sheet_shows_each_hits_label(tmp_path):
    write_faces(tmp_path / "faces", ["happy", "sad"], 1, size=40)
    ids = ["happy/0.png", "sad/0.png"]
    items = fmt.Items(ids=ids, labels=np.arange(2), class_names=["Happiness", "Sadness"])
    rows = np.eye(2, 8, dtype=np.float32)
    cache = tmp_path / "c.h5"
    write_arrays(cache, items, file_attrs={"source_root": str(tmp_path / "faces")},
                 aligned={fmt.image_path("m@t"): (rows, {"model": "m"})})
    hits = [{"rank": 1, "score": 0.91, "id": "sad/0.png", "label": "Sadness"},
            {"rank": 2, "score": 0.42, "id": "happy/0.png", "label": None}]
    fig = hits_figure(Locator(cache), "a sad face", hits)
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles == ["#1 0.910\nSadness\nsad/0.png", "#2 0.420\nno label\nhappy/0.png"]
    path = files.write_png(fig, tmp_path / "hits.png")
    with Image.open(path) as shown:
        assert shown.format == "PNG" and shown.size == (1140, 220)


DOCS = ("confusion.png", "annotate.png", "timeline.png", "search-sheet.png")


def test_the_readmes_pictures_are_small_open_and_are_shown():
    readme = (ROOT / "README.md").read_text("utf-8")
    for name in DOCS:
        path = ROOT / "docs" / "images" / name
        assert path.stat().st_size < 150_000, name
        with Image.open(path) as shown:
            shown.verify()
            assert shown.format == "PNG"
        assert f"docs/images/{name}" in readme
