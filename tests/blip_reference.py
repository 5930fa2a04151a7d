"""The BLIP-2 image half written out from a model's submodules, for the teacher tests' independent computations."""

import torch


def blip2_image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 32, Dt): vision tower → Q-Former over the 32 learned queries → language projection."""
    patches = model.vision_model(pixel_values=pixels).last_hidden_state
    queries = model.qformer(
        query_embeds=model.query_tokens.expand(len(pixels), -1, -1),
        encoder_hidden_states=patches,
        encoder_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
    ).last_hidden_state
    return model.language_projection(queries)
