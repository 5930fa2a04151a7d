"""`predict` over inputs: every face of every picture, every `every`-th frame of each clip, and each clip whole.

Records (the JSON `expclip predict --json` writes, a list):
- a face: `{"kind": "face", "file", "frame" (null for a picture), "face" (0 = largest),
  "box": [x, y, w, h], "probabilities": {class: p}, "top"}`;
- a clip (video file or frame folder): `{"kind": "clip", "file", "frames": [the 16
  sampled frame indices], "frames_with_a_face", "probabilities", "top"}` — the
  paper's rule over the largest face of each sampled frame (absent when no
  sampled frame shows a face);
- a face track of a clip (one per person; see `tracks`): `{"kind": "track",
  "file", "track" (0 = seen in most sampled frames), "frames": [the sampled
  frame indices it is seen in], "boxes": [[x, y, w, h] in each], "probabilities",
  "top"}` — the paper's rule over that face alone.
"""

from __future__ import annotations

from pathlib import Path

from expclip.predict.api import ZeroShotFER
from expclip.predict.media import Clip, inputs, picture
from expclip.stages.shared import protocol
from expclip.stages.shared.progress import progress


def predict_inputs(model: ZeroShotFER, paths: list[Path], *, every: int = 1, frame_folders: bool = False) -> list[dict]:
    records: list[dict] = []
    found = list(inputs(paths, frame_folders=frame_folders))
    with progress("inputs") as bar:
        task = bar.add_task("predict", total=len(found))
        for item in found:
            records += _clip(model, item, every) if isinstance(item, Clip) else _picture(model, item)
            bar.advance(task)
    return records


def _faces(model: ZeroShotFER, path: Path, seen: tuple, frame: int | None) -> list[dict]:
    return [{"kind": "face", "file": str(path), "frame": frame, **r} for r in model.face_verdicts(*seen)]


def _picture(model: ZeroShotFER, path: Path) -> list[dict]:
    return _faces(model, path, model.detect(picture(path)), None)


def _clip(model: ZeroShotFER, clip: Clip, every: int) -> list[dict]:
    count = clip.count()
    if count == 0:
        return []
    sampled = protocol.frame_indices(count)
    wanted = sorted(set(range(0, count, every)) | set(sampled))
    records, detected = [], {}
    for i, image in clip.read(wanted):
        seen = model.detect(image)  # faces found and encoded once, for the frame's records and the clip's
        if i % every == 0:
            records += _faces(model, clip.path, seen, i)
        if i in sampled:
            detected[i] = seen
    read = [i for i in sampled if i in detected]  # a short clip repeats frame 0, as the protocol does
    whole = model.clip_verdict([detected[i] for i in read])
    if whole is not None:
        records.append({"kind": "clip", "file": str(clip.path), "frames": sampled, **whole})
    for track in model.track_verdicts([detected[i] for i in read]):
        positions = track.pop("positions")
        records.append({"kind": "track", "file": str(clip.path), "track": track.pop("track"),
                        "frames": [read[p] for p in positions], **track})
    return records
