"""What a run of stage one must do, decided before any encoder is loaded.

Every group's key and configuration come from the encoder modules' `identity`
functions, which load no model; registering each group with the cache writer
checks it against the cache and the partial folder and answers which shards
are still to encode. Only the encoders of groups with work are loaded later, so
a complete cache is recognised without touching the GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expclip.cache import format as fmt
from expclip.cache.writer import Extraction, Range
from expclip.stages.encoders import clip as clip_encoder
from expclip.stages.encoders import teacher as teacher_encoder
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.levers import clip_precision_name
from expclip.stages.extract.prompts import load_prompt_file, text_rows
from expclip.stages.extract.sources import Source
from expclip.stages.shared import protocol
from expclip.stages.shared.progress import stderr


@dataclass(frozen=True)
class TextGroup:
    """One prompt set to encode with the CLIP text tower: one row per prompt."""

    path: str
    prompts: list[str]
    class_index: list[int]
    config: dict

    @property
    def attrs(self) -> dict:
        return {**self.config, "prompts": self.prompts, "class_names": protocol.class_order(),
                "class_index": self.class_index}


@dataclass
class Plan:
    """The groups a run writes and the encoders it needs for them."""

    job: Extraction
    image_path: str
    teacher_path: str | None  # None: no teacher asked for, or a clip list
    shards: dict[str, list[Range]]  # item-aligned group -> shard ranges still to encode (only groups with some)
    texts: list[TextGroup]  # prompt sets still to encode

    @property
    def needs_clip(self) -> bool:
        return self.image_path in self.shards or bool(self.texts)

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_path in self.shards

    def share(self, part: tuple[int, int] | None, rank: int, size: int, leader: bool) -> Plan:
        """The work of one process: `--part K/N` keeps the work units (a shard, or every shard of one tar)
        whose index % N is K-1 (text groups count as unit 0: part 1's), then rank r of `size` takes every
        size-th of the units still missing."""
        unit = self.job.unit
        keep = (lambda start: True) if part is None else (lambda start: unit(start) % part[1] == part[0] - 1)
        kept = {r for ranges in self.shards.values() for r in ranges if keep(r[0])}
        units = set(sorted({unit(a) for a, _ in kept})[rank::size])
        todo = {r for r in kept if unit(r[0]) in units}
        shards = {p: mine for p, ranges in self.shards.items() if (mine := [r for r in ranges if r in todo])}
        texts = self.texts if leader and keep(0) else []
        return Plan(self.job, self.image_path, self.teacher_path, shards, texts)

    def new_bytes(self, widths: dict[str, int], frames: int | None, dtype: str) -> int:
        """Bytes of the features this plan writes, given the row widths known (path -> width; a group
        whose encoder this process did not load counts 0): item-aligned shards in `dtype`, text groups as
        float32 rows of the CLIP width."""
        row = (frames or 1) * np.dtype(dtype).itemsize
        size = sum((b - a) * widths.get(p, 0) * row for p, ranges in self.shards.items() for a, b in ranges)
        return size + sum(len(t.prompts) for t in self.texts) * widths.get(self.image_path, 0) * 4


def make_plan(source: Source, out: Path, cfg: ExtractConfig, precision: str, sole_writer: bool = False) -> Plan:
    """Compute every identity first (a bad option fails before anything is written), then register the groups.

    `sole_writer`: this process holds the cache's exclusive lock (see cache.writer.Extraction)."""
    clip_key, clip_config = clip_identity_for(cfg, precision)
    teacher = _teacher(source, cfg, precision)
    sets = {**protocol.prompt_sets(), **(load_prompt_file(cfg.prompts) if cfg.prompts else {})}
    texts = [_text_group(clip_key, clip_config, name, prompt_set) for name, prompt_set in sets.items()]

    recorded = {"dataset": source.dataset, "source": str(source.origin), "source_root": str(source.root.resolve())}
    job = Extraction(out, source.items, recorded, shard_size=cfg.shard_size, sole_writer=sole_writer,
                     units=source.units)
    image_path = fmt.image_path(clip_key)
    shards = {}
    for path, config in [(image_path, clip_config), *([teacher] if teacher else [])]:
        todo = job.register(path, config)
        if todo:
            shards[path] = todo
    texts = [t for t in texts if job.register(t.path, t.config, rows=len(t.prompts))]
    return Plan(job, image_path, teacher[0] if teacher else None, shards, texts)


def clip_identity_for(cfg: ExtractConfig, precision: str) -> tuple[str, dict]:
    """(CLIP key, configuration) of the image features `cfg` extracts: the one reading of its CLIP options."""
    key, config = clip_encoder.identity(cfg.clip_model, cfg.clip_pretrained, cfg.transform, precision)
    return key, {**config, "precision": clip_precision_name(cfg, precision, config["precision"])}


def teacher_identity_for(cfg: ExtractConfig, precision: str) -> tuple[str, str, dict]:
    """(teacher key, instruction key, configuration) of the teacher features `cfg` extracts."""
    return teacher_encoder.identity(cfg.teacher, cfg.instruction, cfg.transform, precision)


def _teacher(source: Source, cfg: ExtractConfig, precision: str) -> tuple[str, dict] | None:
    """(group path, configuration) of the teacher features, or None when none are extracted."""
    if cfg.teacher is None:
        return None
    if source.items.kind == "clips":
        stderr.print("[yellow]note:[/] clip lists are evaluation data; teacher features are not extracted for them")
        return None
    t_key, i_key, config = teacher_identity_for(cfg, precision)
    return fmt.teacher_path(t_key, i_key), config


def _text_group(clip_key: str, clip_config: dict, name: str, prompt_set: dict[str, list[str]]) -> TextGroup:
    """A prompt set keyed by its prompts and their classes; text features do not depend on the image transform."""
    prompts, class_index = text_rows(prompt_set)
    config = {k: v for k, v in clip_config.items() if k != "transform"}
    config["prompts_sha256"] = fmt.digest([np.frombuffer(json.dumps([prompts, class_index]).encode(), dtype=np.uint8)])
    return TextGroup(fmt.text_path(clip_key, name), prompts, class_index, config)
