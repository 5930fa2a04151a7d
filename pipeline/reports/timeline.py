"""A clip's timeline (`predict --annotate`): each face track's probabilities over time, with the verdicts.

x is in seconds when the records say when: a face record's `seconds`, else its
frame over the clip's frame rate (`fps` of any of its records, or a face's
frame over its `seconds`). Without either it is the frame index, and the axis
says so. One panel per face track (the TIMELINE_TRACKS seen most), one line per
class. Each line is a centred moving mean over SMOOTH consecutive readings of
the track (fewer at the ends), so one noisy frame does not read as a change of
expression; the raw readings are drawn faint beneath it. The frames the
verdicts are made of (the protocol's 16 sampled frames) are dotted vertical
lines; the figure's title gives the whole clip's verdict, each panel's title
its track's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

SMOOTH = 5  # readings per moving mean: light enough that a real change still shows within a few frames
TIMELINE_TRACKS = 4
SAMPLED = "sampled"  # the gid of the sampled frames' lines


def smoothed(values: Sequence[float], window: int = SMOOTH) -> np.ndarray:
    """The centred moving mean over `window` readings, over fewer at the ends."""
    v = np.asarray(values, dtype=np.float64)
    half = window // 2
    return np.array([v[max(0, i - half):i + half + 1].mean() for i in range(len(v))])


def frame_rate(records: list[dict]) -> float | None:
    """Frames per second as a clip's records tell it, or None when they do not."""
    for r in records:
        if r.get("fps"):
            return float(r["fps"])
    return next((r["frame"] / r["seconds"] for r in records if r.get("seconds") and r.get("frame")), None)


def _verdict(r: dict | None) -> str:
    return "no verdict" if r is None else f"{r['top']} {r['probabilities'][r['top']]:.2f}"


def timeline_figure(file: str, records: list[dict], classes: list[str]) -> Figure | None:
    """The timeline of one clip's records (faces, its clip and track verdicts); None when no face was found."""
    faces = [r for r in records if r["kind"] == "face"]
    tracks = sorted({r["track"] for r in faces})[:TIMELINE_TRACKS]  # track 0 = seen most
    if not tracks:
        return None
    fps = frame_rate(records)

    def when(r: dict) -> float:
        return r["frame"] if fps is None else r.get("seconds", r["frame"] / fps)

    whole = next((r for r in records if r["kind"] == "clip"), None)
    verdicts = {r["track"]: r for r in records if r["kind"] == "track"}
    sampled = sorted(set(whole["frames"])) if whole else []
    fig = Figure(figsize=(8, 0.8 + 2.2 * len(tracks)), layout="constrained")
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, track in zip(axes, tracks):
        seen = sorted((r for r in faces if r["track"] == track), key=lambda r: r["frame"])
        x = [when(r) for r in seen]
        for i, c in enumerate(classes):
            y = [r["probabilities"][c] for r in seen]
            ax.plot(x, y, color=f"C{i}", alpha=0.25, linewidth=0.8, label=f"_raw {c}")
            ax.plot(x, smoothed(y), color=f"C{i}", label=c)
        for k, frame in enumerate(sampled):
            ax.axvline(frame if fps is None else frame / fps, color="0.4", linestyle=":", linewidth=0.8, gid=SAMPLED,
                       label="sampled frame" if k == 0 else "_sampled")
        mine = verdicts.get(track)
        seen_in = f" (in {len(mine['frames'])} of {len(whole['frames'])} sampled frames)" if mine and whole else ""
        ax.set_title(f"track {track}: {_verdict(mine)}{seen_in}", fontsize=9)
        ax.set(ylabel="probability", ylim=(0, 1))
    axes[-1].set_xlabel("frame index (no frame rate recorded)" if fps is None else "seconds")
    name = Path(file).name.replace("$", r"\$")  # a file name is text, never mathtext
    fig.suptitle(f"{name} — whole clip: {_verdict(whole)}", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, ncols=min(len(classes) + 1, 8),
               loc="outside lower center")
    return fig
