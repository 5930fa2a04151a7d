"""The InstructBLIP Flan-T5 teacher family (`instructblip-t5`, Salesforce/instructblip-flan-t5-xl / -xxl).

As `blip2-t5`, except that the Q-Former reads the instruction too (tokenised by
the processor's own `qformer_tokenizer`, with its special tokens), so the 32
query outputs that reach the T5 encoder already depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

from expclip.stages.encoders.base import TeacherSpec
from expclip.stages.encoders.blip import load_checkpoint
from expclip.stages.encoders.blip2_t5 import Blip2T5Teacher, drop_t5_decoder


@dataclass
class InstructBlipT5Teacher(Blip2T5Teacher):
    """Instruction-aware queries -> T5 encoder -> mean."""

    qformer_ids: torch.Tensor  # (1, Lq) on device
    qformer_mask: torch.Tensor  # (1, Lq) on device

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 32, Dt): the first 32 Q-Former outputs (the queries), projected."""
        batch = pixels.shape[0]
        return self.model.get_image_features(
            pixel_values=pixels,
            qformer_input_ids=self.qformer_ids.expand(batch, -1),
            qformer_attention_mask=self.qformer_mask.expand(batch, -1),
        ).pooler_output


def load(spec: TeacherSpec, device: torch.device) -> InstructBlipT5Teacher:
    """An InstructBLIP Flan-T5 checkpoint (HF id or saved folder) as a frozen teacher on `device`."""
    model, processor = load_checkpoint(spec, InstructBlipForConditionalGeneration, InstructBlipProcessor)
    drop_t5_decoder(model)
    qformer = processor.qformer_tokenizer(spec.instruction, return_tensors="pt")
    return InstructBlipT5Teacher.from_loaded(
        spec, model, processor, device,
        qformer_ids=qformer["input_ids"].to(device), qformer_mask=qformer["attention_mask"].to(device),
    )
