"""`predict` over inputs: every face of every picture, every `every`-th frame of each clip, and each clip whole.

Records (the JSON `expclip predict --json` writes, a list):
- a face: `{"kind": "face", "file", "frame" (null for a picture), "face" (0 = largest),
  "box": [x, y, w, h], "probabilities": {class: p}, "top"}`, and in a clip
  `"track"`: the person it belongs to (see `tracks`);
- a clip (video file or frame folder): `{"kind": "clip", "file", "frames": [the 16
  sampled frame indices], "frames_with_a_face", "probabilities", "top"}` — the
  paper's rule over the largest face of each sampled frame (absent when no
  sampled frame shows a face);
- a face track of a clip (one per person seen in a sampled frame): `{"kind":
  "track", "file", "track" (0 = seen in most frames), "frames": [the sampled
  frame indices it is seen in], "boxes": [[x, y, w, h] in each], "probabilities",
  "top"}` — the paper's rule over that face alone. Tracks are linked over every
  frame read (each `every`-th and the sampled ones), so a denser `--every`
  follows faces more surely;
- an input that cannot be read (a truncated picture, a video that does not open or
  has no decodable frame, a frame folder with a broken frame): `{"kind":
  "failed", "file", "reason"}`. It is skipped, as extract skips such files, and
  the others keep their records; only when every input fails is it an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.stages.predict.api import ZeroShotFER
from expclip.stages.predict.media import Clip, Unreadable, inputs, picture
from expclip.stages.shared import protocol
from expclip.stages.shared.progress import progress


def predict_inputs(model: ZeroShotFER, paths: list[Path], *, every: int = 1,
                   frame_folders: bool = False) -> tuple[list[dict], int]:
    """Every record of every input, and how many inputs there were; the progress bar counts pictures and video
    frames, so a long video moves it. Every input unreadable: one ExpclipError (the reason, or the first of them)."""
    found: list[tuple[Path | Clip, tuple[list[int], list[int]] | None, Unreadable | None]] = []
    for item in inputs(paths, frame_folders=frame_folders):
        try:
            found.append((item, _frames(item.count(), every) if isinstance(item, Clip) else None, None))
        except Unreadable as e:
            found.append((item, None, e))
    records: list[dict] = []
    with progress("frames") as bar:
        task = bar.add_task("predict", total=sum(1 if plan is None else len(plan[1]) for _, plan, _ in found))
        for item, plan, failed in found:
            end = bar.tasks[task].completed + (1 if plan is None else len(plan[1]))
            try:
                if failed is not None:
                    raise failed
                records += (_picture(model, item) if plan is None
                            else _clip(model, item, *plan, every, lambda n: bar.advance(task, n)))
            except Unreadable as e:
                records.append({"kind": "failed", "file": str(e.path), "reason": e.reason})
            bar.update(task, completed=end)
    failures = [r for r in records if r["kind"] == "failed"]
    if found and len(failures) == len(found):
        first = f"{failures[0]['file']}: {failures[0]['reason']}"
        raise ExpclipError(
            first if len(found) == 1 else f"none of the {len(found)} inputs could be read ({first}, ...)"
        )
    return records, len(found)


def _frames(count: int, every: int) -> tuple[list[int], list[int]]:
    """A clip's 16 sampled frames (the paper's rule) and every frame to read: those and each `every`-th."""
    if count < 1:  # a header without a count; reading finds no frame, and the clip is recorded as failed
        return [], []
    sampled = protocol.frame_indices(count)
    return sampled, sorted(set(range(0, count, every)) | set(sampled))


def _faces(model: ZeroShotFER, path: Path, seen: tuple, frame: int | None) -> list[dict]:
    return [{"kind": "face", "file": str(path), "frame": frame, **r} for r in model.face_verdicts(*seen)]


def _picture(model: ZeroShotFER, path: Path) -> list[dict]:
    return _faces(model, path, model.detect(picture(path)), None)


def _clip(model: ZeroShotFER, clip: Clip, sampled: list[int], wanted: list[int], every: int,
          advance: Callable[[int], None]) -> list[dict]:
    read: list[int] = []  # the frame indices read, in order
    seen: list[tuple] = []  # and `detect`'s faces in each: found and encoded once for every record below
    for i, image in clip.read(wanted):
        read.append(i)
        seen.append(model.detect(image))
        advance(1)
    advance(len(wanted) - len(read))  # frames a video's header promised but its stream lacked
    if not read:
        raise Unreadable(clip.path, "no frame could be decoded")
    position = {i: p for p, i in enumerate(read)}
    in_sample = {position[i] for i in sampled if i in position}
    tracks = model.track_verdicts(seen, scored=in_sample)  # linked over every frame read
    track_of = {(p, j): t["track"] for t in tracks for p, j in zip(t["positions"], t["faces"])}
    records = [{**r, "track": track_of[p, r["face"]]}
               for p, i in enumerate(read) if i % every == 0 for r in _faces(model, clip.path, seen[p], i)]
    whole = model.clip_verdict([seen[position[i]] for i in sampled if i in position])  # a short clip repeats
    if whole is not None:  # frame 0, as the protocol does
        records.append({"kind": "clip", "file": str(clip.path), "frames": sampled, **whole})
    for t in tracks:
        here = [k for k, p in enumerate(t["positions"]) if p in in_sample]
        if here:
            records.append({"kind": "track", "file": str(clip.path), "track": t["track"],
                            "frames": [read[t["positions"][k]] for k in here], "boxes": [t["boxes"][k] for k in here],
                            "probabilities": t["probabilities"], "top": t["top"]})
    return records
