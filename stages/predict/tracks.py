"""Faces followed across a clip's frames, so that the paper's video rule gives one verdict per person.

Over the largest face of each frame alone, a clip with two people mixes them
whenever their sizes swap. Here each frame's faces join the tracks whose latest
box they overlap most (intersection over union at least TRACK_IOU, pairs taken
best first, a track at most once per frame); a face that overlaps none starts a
track. A face that moves by more than about half its size between two frames
read therefore starts a new track (`predict --every` sets how far apart they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from expclip.stages.predict.faces import Box

TRACK_IOU = 0.3


@dataclass
class Track:
    """One face over frames: positions in the frame sequence given to `link`, its box in each, and what the
    caller gave with each box (its crop, or its CLIP features)."""

    positions: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    faces: list[Any] = field(default_factory=list)

    def add(self, position: int, box: Box, face: Any) -> None:
        self.positions.append(position)
        self.boxes.append(box)
        self.faces.append(face)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    h = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    inter = max(0, w) * max(0, h)
    return inter / (a.w * a.h + b.w * b.h - inter) if inter else 0.0


def link(faces_per_frame: Sequence[Sequence[tuple[Box, Any]]], min_iou: float = TRACK_IOU) -> list[Track]:
    """Tracks over the frames' (box, face) pairs, longest first (ties: the one that began first)."""
    tracks: list[Track] = []
    for position, faces in enumerate(faces_per_frame):
        pairs = sorted(
            ((iou(t.boxes[-1], box), k, j) for k, t in enumerate(tracks) for j, (box, _) in enumerate(faces)),
            key=lambda pair: -pair[0],
        )
        joined_tracks, joined_faces = set(), set()
        for overlap, k, j in pairs:
            if overlap < min_iou:
                break
            if k not in joined_tracks and j not in joined_faces:
                tracks[k].add(position, *faces[j])
                joined_tracks.add(k)
                joined_faces.add(j)
        for j, (box, face) in enumerate(faces):
            if j not in joined_faces:
                tracks.append(Track())
                tracks[-1].add(position, box, face)
    return sorted(tracks, key=lambda t: (-len(t.positions), t.positions[0]))
