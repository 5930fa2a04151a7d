"""The teacher front door of stage one: which family a checkpoint belongs to, its cache identity, loading.

Families are data, as open_clip's model configs are: each is one module (its
`load`) plus one `FAMILIES` entry naming how a checkpoint's own config.json
identifies it (`model_type`, and `text_config.model_type`). The family is read
from that config alone, so a complete cache is recognised without loading
weights, and the stage needs no change when a family is added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from expclip.base.errors import ExpclipError
from expclip.cache.format import encoder_key
from expclip.stages.encoders import blip2_opt, blip2_t5, instructblip_t5
from expclip.stages.encoders.base import Teacher, TeacherSpec, load_error
from expclip.stages.encoders.transforms import check_transform
from expclip.stages.shared.precision import check_precision
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION
from expclip.stages.shared.vocabulary import OFFICIAL_TRANSFORM


@dataclass(frozen=True)
class Family:
    """One teacher family: how a checkpoint's config names it, and how to load it."""

    name: str  # recorded as the group's `family` attribute
    model_type: str  # config.json's own `model_type`
    text_model_type: str  # its `text_config.model_type`
    load: Callable[[TeacherSpec, torch.device], Teacher]


FAMILIES = (
    Family("blip2-t5", "blip-2", "t5", blip2_t5.load),
    Family("blip2-opt", "blip-2", "opt", blip2_opt.load),
    Family("instructblip-t5", "instructblip", "t5", instructblip_t5.load),
)


def instruction_key(instruction: str) -> str:
    """`paper` for the paper's instruction, else `sha-` and 10 hex digits of its sha256."""
    if instruction == DEFAULT_INSTRUCTION:
        return "paper"
    return "sha-" + hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:10]


def _source(id_or_dir: str) -> str:
    """An existing folder as an absolute path, else the id as given; refuses missing folders."""
    folder = Path(id_or_dir).expanduser()
    if id_or_dir.startswith((".", "/", "~")) and not folder.is_dir():
        raise ExpclipError(f"teacher folder {id_or_dir!r} does not exist")
    return str(folder.resolve()) if folder.is_dir() else id_or_dir


def family_of(source: str) -> Family:
    """The family whose config types the checkpoint's config.json declares (no weights are read)."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        raise load_error("the teacher's config of", source, error) from None
    text_config = getattr(config, "text_config", None)
    types = (config.model_type, getattr(text_config, "model_type", None))
    for family in FAMILIES:
        if types == (family.model_type, family.text_model_type):
            return family
    found = f"model_type {types[0]!r}" + (f", text_config.model_type {types[1]!r}" if types[1] else "")
    supported = ", ".join(f"{f.name} ({f.model_type} + {f.text_model_type})" for f in FAMILIES)
    raise ExpclipError(
        f"teacher {source!r} ({found}) is of no supported family; supported teacher families: {supported}"
    )


def _spec(id_or_dir: str, instruction: str, transform: str, precision: str) -> tuple[Family, TeacherSpec]:
    check_transform(transform)
    check_precision(precision)
    source = _source(id_or_dir)
    family = family_of(source)
    key = encoder_key([Path(source).name if Path(source).is_dir() else source], transform == OFFICIAL_TRANSFORM)
    return family, TeacherSpec(
        family.name, source, instruction, transform, precision, key, instruction_key(instruction)
    )


def identity(id_or_dir: str, instruction: str, transform: str, precision: str) -> tuple[str, str, dict]:
    """(teacher key, instruction key, configuration), known from the checkpoint's config alone.

    The configuration includes `family`, so a folder whose checkpoint changed
    family is refused under its old key; the weights' hash is not in it (see
    `blip.BlipTeacher.from_loaded`).
    """
    _, spec = _spec(id_or_dir, instruction, transform, precision)
    return spec.key, spec.instruction_key, spec.config


def load_teacher(id_or_dir: str, instruction: str, *, device: torch.device, precision: str, transform: str) -> Teacher:
    """Load a checkpoint of any supported family (HF id or saved folder) as a frozen teacher on `device`."""
    family, spec = _spec(id_or_dir, instruction, transform, precision)
    return family.load(spec, device)
