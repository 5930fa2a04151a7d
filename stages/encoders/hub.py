"""open_clip's `hf-hub:ORG/REPO` models: the files open_clip reads from a hub repo, found before loading.

open_clip takes a hub repo's `open_clip_config.json` and its weights
(`open_clip_model.safetensors`, else `open_clip_pytorch_model.bin`) through
`download_pretrained_from_hf`; asking that same function first gives the very
file that will be loaded, so its sha256 can be recorded (the repo's `main` may
move) and checked again when a cache or head reloads it. With
`HF_HUB_OFFLINE=1` both come from the hub cache (`$HF_HOME/hub`) alone.
"""

from __future__ import annotations

import re

from huggingface_hub import constants
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import download_pretrained_from_hf

from expclip.base.errors import ExpclipError
from expclip.stages.shared.clip_identity import HF_HUB

_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # the hub's ORG/REPO


def hub_files(name: str) -> tuple[str, str]:
    """(config file, weights file) that open_clip loads for `hf-hub:ORG/REPO`, or one line saying what is missing
    and where it was looked for."""
    repo = name[len(HF_HUB):]
    if not _REPO.fullmatch(repo):
        raise ExpclipError(f"{name}: a hub model is named hf-hub:ORG/REPO (e.g. hf-hub:timm/ViT-B-16-SigLIP)")
    config = _fetch(name, repo, HF_CONFIG_NAME, HF_CONFIG_NAME)
    weights = _fetch(name, repo, None, f"{HF_SAFE_WEIGHTS_NAME} or {HF_WEIGHTS_NAME}")
    return config, weights


def _fetch(name: str, repo: str, filename: str | None, what: str) -> str:
    """One file of the repo by open_clip's own rule (None: its weights), from the hub cache or the hub."""
    try:
        return download_pretrained_from_hf(repo, filename=filename)
    except FileNotFoundError as error:
        if constants.is_offline_mode():
            raise ExpclipError(f"{name}: no {what} for {repo} in the hub cache {constants.HF_HUB_CACHE} "
                               "(HF_HUB_OFFLINE=1: nothing is downloaded; set HF_HOME to the cache that has it)"
                               ) from None
        reason = " ".join(str(error).split("Last error:")[-1].split())[:300]
        raise ExpclipError(f"{name}: cannot get {what} from the Hugging Face hub ({reason})") from None
