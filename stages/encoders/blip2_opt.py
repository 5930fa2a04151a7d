"""The BLIP-2 OPT teacher family (`blip2-opt`, e.g. Salesforce/blip2-opt-2.7b).

The feature is the mean over tokens of the OPT decoder's last hidden state
(after its final layer norm) for [32 projected Q-Former queries ; the
instruction's tokens as the checkpoint's tokenizer makes them (OPT prepends
`</s>`)], all attended. OPT is causal, so a query token sees only the queries
before it and the instruction tokens see the whole image. Nothing is
generated: the LM head never runs and is dropped (when it is tied to the input
embedding, that weight stays as the embedding).
"""

from __future__ import annotations

import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from expclip.stages.encoders.base import TeacherSpec
from expclip.stages.encoders.blip import BlipTeacher, load_checkpoint


class Blip2OptTeacher(BlipTeacher):
    """BLIP-2 queries -> OPT decoder stack (no cache, no head) -> mean."""

    def language_hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        decoder = self.model.language_model.model.decoder
        return decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state


def load(spec: TeacherSpec, device: torch.device) -> Blip2OptTeacher:
    """A BLIP-2 OPT checkpoint (HF id or saved folder) as a frozen teacher on `device`."""
    model, processor = load_checkpoint(spec, Blip2ForConditionalGeneration, Blip2Processor)
    del model.language_model.lm_head
    return Blip2OptTeacher.from_loaded(spec, model, processor, device)
