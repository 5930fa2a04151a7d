"""Which CLIP encoder made some features: the naming rule shared by stage one's keys and the heads.

open_clip names a model folder `local-dir:PATH` and a hub repo `hf-hub:ORG/REPO`;
a folder is identified by its base name (so a cache or head moved to another
machine still matches), a hub model by its repo id, and weights by their sha256
when they came from a file (a folder's, a repo's or a path), else by their
pretrained tag.
"""

from __future__ import annotations

from pathlib import Path

LOCAL_DIR = "local-dir:"  # open_clip's prefix for a model folder
HF_HUB = "hf-hub:"  # open_clip's prefix for a Hugging Face hub repo of open_clip_config.json + weights


def model_name(model: str) -> str:
    """A CLIP model as keys name it: a `local-dir:` folder by its base name."""
    return Path(model[len(LOCAL_DIR):]).name if model.startswith(LOCAL_DIR) else model


def clip_identity(attrs: dict) -> tuple[str, str]:
    """(model name, weights) of an image group's or a head's recorded CLIP provenance."""
    return model_name(str(attrs.get("model", ""))), str(attrs.get("pretrained_sha256") or attrs.get("pretrained", ""))


def own_weights(model: str) -> bool:
    """Whether a model name brings its weights with it (a `local-dir:` folder, an `hf-hub:` repo): no tag."""
    return model.startswith((LOCAL_DIR, HF_HUB))


def recorded_pretrained(attrs: dict) -> str | None:
    """The `pretrained` argument that reloads a recorded CLIP: none for a folder or hub repo (it brings its own
    weights), else the recorded tag or weights file."""
    if own_weights(str(attrs.get("model", ""))):
        return None
    return str(attrs.get("pretrained") or "") or None
