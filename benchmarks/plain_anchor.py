"""The plain script a researcher would write in an afternoon: stage one's anchor, measured in the same run.

The same random-weight modules the product runs, with bf16 weights, eager, under
`torch.inference_mode`, on a batch already on the device: no DataLoader, no
transforms, no autocast, no cache writing. `stage_one.py` divides its end-to-end
rate by this one (the headline ratio), so both see the same card, clocks and
weights. The teacher is written out from its submodules as the paper describes
it (ViT-g → Q-Former → language projection; [queries ; instruction] → T5 encoder
→ mean), not through the product's encoder class.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

REPEATS = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A bf16-weight copy (the product's CLIP keeps float32 weights under autocast; the script would not)."""
    return copy.deepcopy(module).to(torch.bfloat16).eval().requires_grad_(False)


def clip_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """open_clip's image tower on bf16 pixels."""
    return lambda pixels: model.encode_image(pixels)


def teacher_forward(model: torch.nn.Module, instruction_ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """BLIP-2 Flan-T5's pooled encoder feature, from its submodules: what the paper's teacher computes."""
    words = model.get_input_embeddings()(instruction_ids)  # (1, L, Dt)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        image = model.vision_model(pixel_values=pixels).last_hidden_state
        queries = model.query_tokens.expand(image.shape[0], -1, -1)
        mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        tokens = model.qformer(query_embeds=queries, encoder_hidden_states=image,
                               encoder_attention_mask=mask).last_hidden_state
        embeds = torch.cat([model.language_projection(tokens), words.expand(image.shape[0], -1, -1)], dim=1)
        return model.language_model.get_encoder()(inputs_embeds=embeds).last_hidden_state.mean(dim=1)

    return forward


def faces_per_second(forwards: list[Callable[[torch.Tensor], torch.Tensor]], pixels: torch.Tensor,
                     repeats: int = REPEATS) -> float:
    """Faces/s of the forwards run one after the other on a resident bf16 batch, after one warm-up pass."""
    device = pixels.device
    pixels = pixels.to(torch.bfloat16)
    with torch.inference_mode():
        for forward in forwards:
            forward(pixels)
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            for forward in forwards:
                forward(pixels)
        sync(device)
    return repeats * len(pixels) / (time.perf_counter() - started)
