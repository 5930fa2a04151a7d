"""`predict` over inputs: every face of every picture, every `every`-th frame of each clip, and each clip whole.

Records (the JSON `expclip predict --json` writes is `{"provenance": {...},
"records": [...]}`: the records stay one list, so `pandas.DataFrame(data["records"])`
is one row per record, and a face's numbers are flat columns; provenance is what
produced them: `ZeroShotFER.provenance`, the CSV repeats it in columns of its own):
- a face: `{"kind": "face", "file", "frame", "seconds" (both null for a picture;
  seconds null for a frame folder without --fps), "face" (0 = largest), "x", "y",
  "w", "h", "score" (the detector's confidence: YuNet's score, null for Haar and
  none), "top", "p_<class>" per class}`, the same box and probabilities nested as
  `"box": [x, y, w, h]` and `"probabilities": {class: p}`, and in a clip
  `"track"`: the person it belongs to (see `tracks`);
- a clip (video file or frame folder): `{"kind": "clip", "file", "frames": [the 16
  sampled frame indices], "seconds" (theirs, or null), "frames_with_a_face", "top",
  "p_<class>", "probabilities"}` — the paper's rule over the largest face of each
  sampled frame (absent when no sampled frame shows a face);
- a face track of a clip (one per person seen in a sampled frame): `{"kind":
  "track", "file", "track" (0 = seen in most frames), "frames": [the sampled
  frame indices it is seen in], "seconds", "boxes": [[x, y, w, h] in each], "top",
  "p_<class>", "probabilities"}` — the paper's rule over that face alone. Tracks
  are linked over every frame read (each `every`-th and the sampled ones), so a
  denser `--every` follows faces more surely;
- an input that cannot be read (a truncated picture, a video that does not open or
  has no decodable frame, a frame folder with a broken frame): `{"kind":
  "failed", "file", "reason"}`. It is skipped, as extract skips such files, and
  the others keep their records; only when every input fails is it an error.

`every`: a number of frames ("10"), or seconds ("0.5s", the default PREDICT_EVERY) at the
clip's frame rate (a video's container's; a frame folder's `--fps`, without which
every frame is scored: frame folders are short clips). Face crops of all pictures
and frames are encoded `batch_size` at a time (`batches`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.stages.predict.api import ZeroShotFER
from expclip.stages.predict.batches import Batches
from expclip.stages.predict.media import Clip, Listing, Unreadable, picture
from expclip.stages.shared import protocol
from expclip.stages.shared.progress import progress
from expclip.stages.shared.vocabulary import PREDICT_EVERY

Plan = tuple[list[int], list[int], int, float | None]  # sampled frames, frames to read, step, fps


def predict_inputs(model: ZeroShotFER, listed: Listing, *, every: str | int = PREDICT_EVERY,
                   fps: float | None = None) -> tuple[list[dict], int]:
    """Every record of every input `media.listing` found, and how many inputs there were; the progress bar counts
    pictures and video frames, so a long video moves it. Every input unreadable: one ExpclipError (the reason, or
    the first of them). `fps`: the frame folders' frame rate (seconds and `every` in seconds need one)."""
    check_clip_options(every, fps)
    found: list[tuple[Path | Clip, Plan | None, Unreadable | None]] = []
    for item in listed.items():
        try:
            if isinstance(item, Clip) and item.frames is not None:
                item.fps = fps
            found.append((item, _plan(item, every) if isinstance(item, Clip) else None, None))
        except Unreadable as e:
            found.append((item, None, e))
    slots: list[list[dict]] = []  # per input, in order; a picture's is filled when its batch is encoded
    batches = model.batches()
    with progress("frames") as bar:
        task = bar.add_task("predict", total=sum(1 if plan is None else len(plan[1]) for _, plan, _ in found))
        for item, plan, failed in found:
            end = bar.tasks[task].completed + (1 if plan is None else len(plan[1]))
            slots.append([])
            try:
                if failed is not None:
                    raise failed
                if plan is None:
                    _picture(model, batches, item, slots[-1])
                else:
                    slots[-1] += _clip(model, batches, item, plan, lambda n: bar.advance(task, n))
            except Unreadable as e:
                slots[-1].append({"kind": "failed", "file": str(e.path), "reason": e.reason})
            bar.update(task, completed=end)
        batches.flush()
    records = [r for slot in slots for r in slot]
    failures = [r for r in records if r["kind"] == "failed"]
    if found and len(failures) == len(found):
        first = f"{failures[0]['file']}: {failures[0]['reason']}"
        raise ExpclipError(
            first if len(found) == 1 else f"none of the {len(found)} inputs could be read ({first}, ...)"
        )
    return records, len(found)


def check_clip_options(every: str | int, fps: float | None) -> None:
    """Refuse a malformed `every` or an `fps` that is not a positive number, before any input is read."""
    frame_step(every, None)
    if fps is not None and not 0 < fps < float("inf"):
        raise ExpclipError(f"--fps {fps}: give the frame folders' frames per second, a number above 0")


def frame_step(every: str | int, fps: float | None) -> int:
    """Frames from one scored frame to the next: `every` frames ("10"), or `every` seconds ("0.5s") at `fps`,
    rounded, at least 1 (every frame when `fps` is unknown)."""
    text = str(every).strip().lower()
    try:
        if text.endswith("s"):
            seconds = float(text[:-1])
            if not 0 < seconds < float("inf"):
                raise ValueError
            return max(1, round(seconds * fps)) if fps else 1
        if int(text) < 1:
            raise ValueError
        return int(text)
    except ValueError:
        raise ExpclipError(f"--every {every!r}: give frames (a whole number, e.g. 10) or seconds (e.g. 0.5s)") from None


def _plan(clip: Clip, every: str | int) -> Plan:
    """A clip's 16 sampled frames (the paper's rule), every frame to read (those and each step-th), the step and
    the clip's fps."""
    count, fps = clip.probe()
    step = frame_step(every, fps)
    if count < 1:  # a header without a count; reading finds no frame, and the clip is recorded as failed
        return [], [], step, fps
    sampled = protocol.frame_indices(count)
    return sampled, sorted(set(range(0, count, step)) | set(sampled)), step, fps


def _seconds(frames: list[int], fps: float | None) -> list[float] | None:
    return None if fps is None else [i / fps for i in frames]


def _faces(model: ZeroShotFER, path: Path, seen: tuple, frame: int | None, fps: float | None) -> list[dict]:
    seconds = None if frame is None or fps is None else frame / fps
    return [{"kind": "face", "file": str(path), "frame": frame, "seconds": seconds, **r}
            for r in model.face_verdicts(*seen)]


def _picture(model: ZeroShotFER, batches: Batches, path: Path, slot: list[dict]) -> None:
    boxes, pixels = model.locate(picture(path))
    batches.put(pixels, lambda features: slot.extend(_faces(model, path, (boxes, features), None, None)))


def _clip(model: ZeroShotFER, batches: Batches, clip: Clip, plan: Plan, advance: Callable[[int], None]) -> list[dict]:
    sampled, wanted, step, fps = plan
    read: list[int] = []  # the frame indices read, in order
    seen: list[list] = []  # and [boxes, features] of each: found and encoded once for every record below
    mark = batches.mark()
    try:
        for i, image in clip.read(wanted):
            read.append(i)
            boxes, pixels = model.locate(image)
            seen.append([boxes, None])
            batches.put(pixels, lambda features, entry=seen[-1]: entry.__setitem__(1, features))
            advance(1)
    except Unreadable:
        batches.cancel(mark)
        raise
    advance(len(wanted) - len(read))  # frames a video's header promised but its stream lacked
    if not read:
        raise Unreadable(clip.path, "no frame could be decoded")
    batches.flush()  # tracks need every frame's features
    position = {i: p for p, i in enumerate(read)}
    in_sample = {position[i] for i in sampled if i in position}
    tracks = model.track_verdicts(seen, scored=in_sample)  # linked over every frame read
    track_of = {(p, j): t["track"] for t in tracks for p, j in zip(t["positions"], t["faces"])}
    records = [{**r, "track": track_of[p, r["face"]]}
               for p, i in enumerate(read) if i % step == 0 for r in _faces(model, clip.path, seen[p], i, fps)]
    whole = model.clip_verdict([seen[position[i]] for i in sampled if i in position])  # a short clip repeats
    if whole is not None:  # frame 0, as the protocol does
        records.append({"kind": "clip", "file": str(clip.path), "frames": sampled,
                        "seconds": _seconds(sampled, fps), **whole})
    for t in tracks:
        here = [k for k, p in enumerate(t["positions"]) if p in in_sample]
        if here:
            frames = [read[t["positions"][k]] for k in here]
            verdict = {k: v for k, v in t.items() if k not in ("track", "positions", "faces", "boxes")}
            records.append({"kind": "track", "file": str(clip.path), "track": t["track"], "frames": frames,
                            "seconds": _seconds(frames, fps), "boxes": [t["boxes"][k] for k in here], **verdict})
    return records
