"""Stage one's last steps: the text features (one shard per prompt set), then the merge into the cache."""

from __future__ import annotations

import numpy as np

from expclip.base.errors import ExpclipError
from expclip.cache.writer import Extraction
from expclip.stages.encoders.base import TextEncoder
from expclip.stages.extract.plan import TextGroup


def write_texts(job: Extraction, texts: list[TextGroup], clip: TextEncoder | None) -> None:
    """Encode each prompt set (float32, as the format says) and write it as its group's one shard."""
    for text in texts:
        features = clip.encode_texts(text.prompts).numpy().astype(np.float32)
        job.describe(text.path, text.attrs, features.shape[1:], "float32")
        job.write_shard(text.path, 0, len(text.prompts), features)


def merge(job: Extraction) -> bool:
    """Merge when the partial folder holds work, unless an earlier run left groups this run cannot finish.

    True when a merge happened (also one finishing an earlier run's shards with nothing left to encode).
    """
    if not job.partial.exists():
        return False
    unfinished = job.unfinished()
    if unfinished:
        raise ExpclipError(
            f"{job.partial.root}: an earlier run left unfinished groups this run does not extract "
            f"({', '.join('/' + p for p in unfinished)}); re-run with that run's options, or delete the folder"
        )
    job.finalize()
    return True
