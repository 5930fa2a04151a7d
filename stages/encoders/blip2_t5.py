"""The BLIP-2 Flan-T5 teacher family (`blip2-t5`), the paper's: one pooled T5-encoder feature per face.

Exp-CLIP's teacher runs only the encoder half of BLIP-2's language model over
[32 projected Q-Former queries ; the instruction's tokens (tokenised alone,
`</s>` appended)] and averages the output tokens after the encoder's final
layer norm. The T5 decoder and LM head (about half of Flan-T5-XXL) never run,
so they are dropped before the model is moved to the device.
"""

from __future__ import annotations

import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor, PreTrainedModel

from expclip.stages.encoders.base import TeacherSpec
from expclip.stages.encoders.blip import BlipTeacher, load_checkpoint


class Blip2T5Teacher(BlipTeacher):
    """BLIP-2 queries -> T5 encoder -> mean."""

    def language_hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


def drop_t5_decoder(model: PreTrainedModel) -> None:
    """Remove what never runs of a T5 language model: its decoder and LM head."""
    del model.language_model.decoder, model.language_model.lm_head


def load(spec: TeacherSpec, device: torch.device) -> Blip2T5Teacher:
    """A BLIP-2 Flan-T5 checkpoint (HF id or saved folder) as a frozen teacher on `device`."""
    model, processor = load_checkpoint(spec, Blip2ForConditionalGeneration, Blip2Processor)
    drop_t5_decoder(model)
    return Blip2T5Teacher.from_loaded(spec, model, processor, device)
