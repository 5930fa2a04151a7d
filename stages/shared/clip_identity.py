"""Which CLIP encoder made some features: the naming rule shared by stage one's keys and the heads.

open_clip names a model folder `local-dir:PATH`; a folder is identified by its
base name (so a cache or head moved to another machine still matches), and
weights by their sha256 when they came from a file, else by their pretrained tag.
"""

from __future__ import annotations

from pathlib import Path

LOCAL_DIR = "local-dir:"  # open_clip's prefix for a model folder


def model_name(model: str) -> str:
    """A CLIP model as keys name it: a `local-dir:` folder by its base name."""
    return Path(model[len(LOCAL_DIR):]).name if model.startswith(LOCAL_DIR) else model


def clip_identity(attrs: dict) -> tuple[str, str]:
    """(model name, weights) of an image group's or a head's recorded CLIP provenance."""
    return model_name(str(attrs.get("model", ""))), str(attrs.get("pretrained_sha256") or attrs.get("pretrained", ""))


def recorded_pretrained(attrs: dict) -> str | None:
    """The `pretrained` argument that reloads a recorded CLIP: none for a `local-dir:` folder (it brings its own
    weights), else the recorded tag or weights file."""
    if str(attrs.get("model", "")).startswith(LOCAL_DIR):
        return None
    return str(attrs.get("pretrained") or "") or None
