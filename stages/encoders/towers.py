"""The towers of a loaded encoder that stage one's speed levers act on: bf16 weights, float8, torch.compile.

A tower is a module that runs once per batch with a fixed input shape: CLIP's
image tower; a BLIP teacher's vision tower, Q-Former and language stack (the
T5 encoder, OPT's decoder). The text tower and embeddings are left alone.
"""

from __future__ import annotations

import torch

from expclip.stages.encoders.base import ImageEncoder
from expclip.stages.encoders.blip import BlipTeacher
from expclip.stages.encoders.clip import ClipEncoder


def towers(encoder: ImageEncoder) -> dict[str, torch.nn.Module]:
    """Name -> tower module of a CLIP encoder or BLIP teacher."""
    if isinstance(encoder, ClipEncoder):
        return {"visual": encoder.model.visual}
    if isinstance(encoder, BlipTeacher):
        model = encoder.model
        language = model.language_model
        stack = language.get_encoder() if hasattr(language, "get_encoder") and language.get_encoder() is not language \
            else language
        return {"vision_model": model.vision_model, "qformer": model.qformer, "language": stack}
    raise TypeError(f"no towers known for {type(encoder).__name__}")


def bf16_weights(tower: torch.nn.Module) -> None:
    """Cast `tower`'s weights to bfloat16 in place, so bf16 autocast no longer casts every weight on every pass;
    LayerNorms keep float32 weights (autocast normalises in float32 anyway)."""
    norms = {id(p) for m in tower.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    for p in tower.parameters():
        if id(p) not in norms and p.dtype == torch.float32:  # float8 weights report bf16: left as they are
            p.data = p.data.to(torch.bfloat16)
