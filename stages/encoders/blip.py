"""What the BLIP teacher families share: loading, the processor transform, and the pooled feature.

Every family computes the same thing, Exp-CLIP's teacher feature: the image's
32 projected Q-Former queries followed by the instruction's tokens go through
the language model's stack once (no generation), and the output tokens are
averaged. Families differ only in how the queries are made
(`BlipTeacher.image_tokens`) and which stack runs (`BlipTeacher.language_hidden`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import PIL.Image
import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel, ProcessorMixin
from transformers.utils import logging as hf_logging

from expclip.stages.encoders.base import TeacherSpec, load_error
from expclip.stages.encoders.provenance import versions_json, weights_sha256
from expclip.stages.encoders.transforms import OnDevice, official_transform, split_on_device
from expclip.stages.shared.precision import autocast, torch_dtype
from expclip.stages.shared.vocabulary import MODEL_TRANSFORM

Model = TypeVar("Model", bound=PreTrainedModel)
Processor = TypeVar("Processor", bound=ProcessorMixin)
TeacherT = TypeVar("TeacherT", bound="BlipTeacher")


class ProcessorTransform:
    """The checkpoint's own image processor as a PIL -> (3, H, W) transform (picklable for workers)."""

    def __init__(self, image_processor: Callable) -> None:
        self.image_processor = image_processor

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_checkpoint(
    spec: TeacherSpec, model_class: type[Model], processor_class: type[Processor]
) -> tuple[Model, Processor]:
    """Processor and model (in the spec's dtype, on the CPU) through the real `from_pretrained` path."""
    hf_logging.disable_progress_bar()  # the extract bar is the one progress display
    try:
        processor = processor_class.from_pretrained(spec.source)
        model = model_class.from_pretrained(spec.source, dtype=torch_dtype(spec.precision))
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise load_error(f"the {spec.family} teacher", spec.source, error) from None
    return model, processor


@dataclass
class BlipTeacher(ABC):
    """A frozen BLIP-family model with its tokenised instruction; satisfies `base.Teacher`."""

    model: PreTrainedModel
    transform: Callable[[PIL.Image.Image], torch.Tensor]
    on_device: OnDevice  # what `transform` leaves for the device (transforms.split_on_device)
    device: torch.device
    precision: str
    key: str
    instruction: str
    instruction_key: str
    instruction_ids: torch.Tensor  # (1, L) on device: the LM tokenizer's own special tokens, no image placeholders
    attrs: dict

    @classmethod
    def from_loaded(
        cls: type[TeacherT], spec: TeacherSpec, model: PreTrainedModel, processor: ProcessorMixin, device: torch.device,
        **fields: Any,
    ) -> TeacherT:
        """Freeze `model` (whose unused parts the family has dropped), move it to `device`, record provenance.

        `weights_sha256` is hashed here, once the weights are loaded anyway, and only
        written to the group's attributes: recognising a complete cache must not
        read tens of gigabytes, so it is not part of `spec.config`.
        """
        model.eval().requires_grad_(False)
        model.to(device)
        transform, on_device = split_on_device(
            ProcessorTransform(processor.image_processor) if spec.transform == MODEL_TRANSFORM else official_transform()
        )
        ids = processor.tokenizer(spec.instruction, return_tensors="pt")["input_ids"]
        attrs = {
            **spec.config, "pooling": "mean", "versions": versions_json(),
            "weights_sha256": weights_sha256(spec.source, getattr(model.config, "_commit_hash", None)),
        }
        return cls(
            model=model,
            transform=transform,
            on_device=on_device,
            device=device,
            precision=spec.precision,
            key=spec.key,
            instruction=spec.instruction,
            instruction_key=spec.instruction_key,
            instruction_ids=ids.to(device),
            attrs=attrs,
            **fields,
        )

    @property
    def width(self) -> int:
        """The language model's hidden size: the width of its output tokens, hence of the pooled row."""
        return int(self.model.get_input_embeddings().embedding_dim)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 32, Dt) projected Q-Former queries; BLIP-2's Q-Former reads the image only."""
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    @abstractmethod
    def language_hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, Dt) output tokens of the language model's stack for input embeddings `embeds`."""

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels from `transform` -> (B, Dt) mean output token, float32, left on the device."""
        model = self.model
        dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
        with torch.inference_mode(), autocast(self.device, self.precision):
            pixels = self.on_device(pixels.to(self.device, non_blocking=True)).to(dtype)
            queries = self.image_tokens(pixels)  # (B, 32, Dt)
            words = model.get_input_embeddings()(self.instruction_ids)  # (1, L, Dt)
            words = words.expand(queries.shape[0], -1, -1)
            embeds = torch.cat([queries.to(words.dtype), words], dim=1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
            pooled = self.language_hidden(embeds, mask).float().mean(dim=1)  # one instruction, so no padding
        return pooled
