"""The BLIP-2 Flan-T5 teacher of stage one: one pooled T5-encoder feature per face.

Exp-CLIP's teacher runs only the encoder half of BLIP-2's language model over
[32 projected Q-Former queries ; the instruction's tokens] and averages the
output tokens. The T5 decoder and LM head (about half of Flan-T5-XXL) never
run, so they are dropped before the model is moved to the device.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from safetensors import SafetensorError
from transformers import Blip2ForConditionalGeneration, Blip2Processor
from transformers.utils import logging as hf_logging

from expclip.base.errors import ExpclipError
from expclip.stages.shared.precision import autocast, check_precision, recorded_name, torch_dtype
from expclip.cache.format import encoder_key
from expclip.stages.extract.encoders.provenance import versions_json
from expclip.stages.extract.encoders.transforms import MODEL, OFFICIAL, check_transform, official_transform
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION


def instruction_key(instruction: str) -> str:
    """`paper` for the paper's instruction, else `sha-` and 10 hex digits of its sha256."""
    if instruction == DEFAULT_INSTRUCTION:
        return "paper"
    return "sha-" + hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:10]


class ProcessorTransform:
    """The checkpoint's own image processor as a PIL -> (3, H, W) transform (picklable for workers)."""

    def __init__(self, image_processor: Callable) -> None:
        self.image_processor = image_processor

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


@dataclass
class TeacherEncoder:
    """A frozen BLIP-2 (vision, Q-Former, projection, T5 encoder) with its tokenised instruction."""

    model: Blip2ForConditionalGeneration
    transform: Callable[[PIL.Image.Image], torch.Tensor]
    device: torch.device
    precision: str
    key: str
    instruction: str
    instruction_key: str
    instruction_ids: torch.Tensor  # (1, L) on device, `</s>` last, no image placeholders
    attrs: dict

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) transformed images -> (B, Dt) mean T5-encoder output, float32 on the CPU."""
        model = self.model
        dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
        with torch.inference_mode(), autocast(self.device, self.precision):
            pixels = pixels.to(self.device, dtype, non_blocking=True)
            queries = model.get_image_features(pixel_values=pixels).pooler_output  # (B, 32, Dt)
            words = model.get_input_embeddings()(self.instruction_ids)  # (1, L, Dt)
            words = words.expand(queries.shape[0], -1, -1)
            embeds = torch.cat([queries.to(words.dtype), words], dim=1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
            hidden = model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            pooled = hidden.float().mean(dim=1)  # one instruction, so no padding to mask
        return pooled.cpu()


def _source(id_or_dir: str) -> str:
    """An existing folder as an absolute path, else the id as given; refuses missing folders."""
    folder = Path(id_or_dir).expanduser()
    if id_or_dir.startswith((".", "/", "~")) and not folder.is_dir():
        raise ExpclipError(f"teacher folder {id_or_dir!r} does not exist")
    return str(folder.resolve()) if folder.is_dir() else id_or_dir


def identity(id_or_dir: str, instruction: str, transform: str, precision: str) -> tuple[str, str, dict]:
    """(teacher key, instruction key, configuration), known without loading the model."""
    check_transform(transform)
    check_precision(precision)
    source = _source(id_or_dir)
    key = encoder_key([Path(source).name if Path(source).is_dir() else source], transform == OFFICIAL)
    config = {"model": source, "instruction": instruction, "transform": transform, "precision": recorded_name(precision)}
    return key, instruction_key(instruction), config


def load_teacher(
    id_or_dir: str, instruction: str, *, device: torch.device, precision: str, transform: str
) -> TeacherEncoder:
    """Load a BLIP-2 Flan-T5 checkpoint (HF id or saved folder) as a frozen teacher on `device`."""
    key, i_key, config = identity(id_or_dir, instruction, transform, precision)
    source = config["model"]
    dtype = torch_dtype(precision)
    hf_logging.disable_progress_bar()  # the extract bar is the one progress display
    try:
        processor = Blip2Processor.from_pretrained(source)
        model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        offline = " (HF_HUB_OFFLINE is set: only folders and cached ids load)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ExpclipError(f"cannot load the BLIP-2 teacher {id_or_dir!r}{offline}: {error}") from None
    if model.config.use_decoder_only_language_model:
        raise ExpclipError(
            f"teacher {id_or_dir!r} has a decoder-only language model "
            f"({model.config.text_config.model_type}); Exp-CLIP needs a BLIP-2 Flan-T5 checkpoint"
        )
    del model.language_model.decoder, model.language_model.lm_head
    model.eval().requires_grad_(False)
    model.to(device)

    ids = processor.tokenizer(instruction, return_tensors="pt")["input_ids"]  # alone, `</s>` appended
    attrs = {**config, "pooling": "mean", "versions": versions_json()}
    return TeacherEncoder(
        model=model,
        transform=ProcessorTransform(processor.image_processor) if transform == MODEL else official_transform(),
        device=device,
        precision=precision,
        key=key,
        instruction=instruction,
        instruction_key=i_key,
        instruction_ids=ids.to(device),
        attrs=attrs,
    )
