"""Stage one: run the frozen encoders once over a source and write the feature cache.

`extract` reads top to bottom as plan → load → run → write: the plan (plan.py)
says which groups the cache lacks and which shards each misses, without
loading any model; only the encoders those groups need are loaded; the batch
loop (run.py) encodes the missing shards; the text features and the merge
(write.py) finish the cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from expclip.cache.reader import CacheReader
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.encoders import clip as clip_encoder
from expclip.stages.extract.encoders import teacher as teacher_encoder
from expclip.stages.extract.plan import Plan, make_plan
from expclip.stages.extract.encoders.base import ImageEncoder
from expclip.stages.extract.run import encode_shards
from expclip.stages.extract.sources import Source
from expclip.stages.extract.write import merge, write_texts
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.precision import resolve_precision

__all__ = ["ExtractConfig", "extract"]


def extract(source: Source, out: Path, cfg: ExtractConfig) -> dict:
    """Encode what the cache at `out` lacks; returns a summary (rows encoded, failures, groups, merged).

    `merged` is True when the cache file was rewritten: by this run's shards or
    by an earlier run's that only needed merging (nothing encoded, nothing loaded).
    """
    cfg.check()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    plan = make_plan(source, Path(out), cfg, precision)
    encoders = _load_encoders(plan, cfg, device, precision)
    encoded, clock = encode_shards(source, plan.job, {p: encoders[p] for p in plan.shards}, plan.shards, cfg)
    write_texts(plan.job, plan.texts, encoders.get(plan.image_path))
    merged = merge(plan.job)
    with CacheReader(out) as cache:
        failures = cache.failures()
    return {"cache": str(out), "rows": len(source.items), "encoded_rows": encoded, "failures": failures,
            "loaded": sorted(encoders), "merged": merged, "ignored_files": source.ignored, "seconds": clock}


def _load_encoders(plan: Plan, cfg: ExtractConfig, device: torch.device, precision: str) -> dict[str, ImageEncoder]:
    """Group path -> loaded encoder, for the groups with work only."""
    encoders: dict[str, ImageEncoder] = {}
    if plan.needs_clip:
        encoders[plan.image_path] = clip_encoder.load_clip(
            cfg.clip_model, cfg.clip_pretrained, device=device, precision=precision, transform=cfg.transform
        )
    if plan.needs_teacher:
        encoders[plan.teacher_path] = teacher_encoder.load_teacher(
            cfg.teacher, cfg.instruction, device=device, precision=precision, transform=cfg.transform
        )
    return encoders
