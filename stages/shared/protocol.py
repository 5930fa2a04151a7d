"""The Exp-CLIP zero-shot protocol as data: class order, prompt sets, frame sampling.

`protocol.json` is the package's own copy of the reference protocol (users have
no `../shared`); tests check it against the reference file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from expclip.base.errors import ExpclipError

DEFAULT_INSTRUCTION = (
    "Please play the role of a facial action describer. "
    "Objectively describe the detailed facial actions of the person in the image."
)
DEFAULT_FRAMES = 16
# A clip's frames are decoded and encoded together and stored as one cache row per frame: 16 times the
# paper's count is room for any protocol, and an unbounded count (a typo, 100000) would exhaust memory.
MAX_FRAMES = 256
DEFAULT_TEACHER = "Salesforce/blip2-flan-t5-xxl"  # LAVIS pretrain_flant5xxl, as used by the paper

# Lower-case spellings that datasets use for the canonical class names.
_SYNONYMS = {
    "Happiness": ("happiness", "happy", "joy", "happily"),
    "Sadness": ("sadness", "sad"),
    "Neutral": ("neutral", "neutrality", "calm"),
    "Anger": ("anger", "angry"),
    "Surprise": ("surprise", "surprised", "surprising"),
    "Disgust": ("disgust", "disgusted", "disgusting"),
    "Fear": ("fear", "fearful", "afraid", "scared"),
    "Contempt": ("contempt", "contemptuous"),
    "Anxiety": ("anxiety", "anxious"),
    "Helplessness": ("helplessness", "helpless"),
    "Disappointment": ("disappointment", "disappointed"),
}


@lru_cache(maxsize=1)
def protocol() -> dict:
    """The packaged protocol JSON (class order, dataset class counts, prompt sets)."""
    text = resources.files("expclip.stages.shared").joinpath("protocol.json").read_text("utf-8")
    return json.loads(text)


def class_order() -> list[str]:
    """The 11 canonical class names in Exp-CLIP label order."""
    return list(protocol()["class_order"])


def dataset_classes() -> dict[str, int]:
    """Number of classes of each benchmark; a dataset uses the first n canonical classes."""
    return dict(protocol()["dataset_classes"])


def dataset_name(name: str | None) -> str | None:
    """A benchmark's own spelling of `name`, matched case-insensitively (`rafdb` -> `RAFDB`); any other name
    as given."""
    if name is None:
        return None
    return next((known for known in dataset_classes() if known.lower() == name.lower()), name)


def prompt_sets() -> dict[str, dict[str, list[str]]]:
    """Prompt set key -> canonical class name -> prompts."""
    return {k: {c: list(p) for c, p in v.items()} for k, v in protocol()["prompt_sets"].items()}


def canonical_class(name: str) -> str | None:
    """The canonical class a dataset's class name means (case-insensitive, synonyms), or None."""
    key = name.strip().lower().replace("_", " ")
    for canonical, spellings in _SYNONYMS.items():
        if key in spellings:
            return canonical
    return None


def check_frames(frames: object, where: str = "--frames") -> int:
    """`frames` when it is a whole number in 1..MAX_FRAMES, else a one-line error naming `where`."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise ExpclipError(f"{where} {frames!r}: sample 1 to {MAX_FRAMES} frames per clip "
                           f"(the paper samples {DEFAULT_FRAMES})")
    return frames


def frame_indices(num_frames: int, frames: int = DEFAULT_FRAMES) -> list[int]:
    """Frames sampled from a clip: the middle of `frames` equal segments, or frame 0 repeated.

    Follows `video_protocol` of the reference: for num_frames > frames,
    int(t/2 + t*i) with t = num_frames/frames; otherwise frame 0 `frames` times.
    """
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if num_frames <= frames:
        return [0] * frames
    t = num_frames / frames
    return [int(t / 2 + t * i) for i in range(frames)]
