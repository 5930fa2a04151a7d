"""Stage one: run the frozen encoders once over a source and write the feature cache.

`extract` reads top to bottom as lock → plan → share → load → run → write:
the cache's lock (cache/lock.py) keeps other runs out (or, for `--part`, in
with it); the plan (plan.py) says which groups the cache lacks and which
shards each misses, without loading any model; this process keeps its share
(its part, its rank's every N-th shard: team.py); only the encoders those
groups need are loaded, and the disk is checked for what they will write; the
batch loop (run.py) encodes the shards; the text features and the merge
(write.py, one process) finish the cache. Ctrl-C stops between batches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from rich.markup import escape

from expclip.cache.lock import CacheLock
from expclip.cache.reader import CacheReader
from expclip.stages.encoders import clip as clip_encoder
from expclip.stages.encoders import teacher as teacher_encoder
from expclip.stages.encoders.base import ImageEncoder
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.encode import encode_shards
from expclip.stages.extract.levers import COMPILING, apply_levers, check_levers
from expclip.stages.extract.plan import Plan, make_plan
from expclip.stages.extract.sources import Source
from expclip.stages.extract.team import join
from expclip.stages.extract.write import merge, write_texts
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.interrupts import stop_requests
from expclip.stages.shared.precision import resolve_precision
from expclip.stages.shared.progress import stderr

__all__ = ["ExtractConfig", "counts", "extract"]


def extract(source: Source, out: Path, cfg: ExtractConfig) -> dict:
    """Encode what the cache at `out` lacks (this process's share of it); returns a summary.

    The summary has `rows` (the source's items), `encoded_rows` (items encoded by this run's job; an item that
    cannot be decoded is not encoded), `failures` (every item the cache holds no features for), groups loaded,
    `merged` (True when the cache file was rewritten: by this run's shards or
    by an earlier run's that only needed merging) and `rank` (only rank 0 of a
    launched job reports; the others return their own share).
    """
    cfg.check()
    part = cfg.part_of()
    device = resolve_device(cfg.device)
    team = join(device)
    device = team.device(device)
    precision = resolve_precision(cfg.precision, device)
    check_levers(cfg, device, precision)
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_for(device.type))
    with stop_requests() as halt:
        lock = team.leader_first(lambda: CacheLock(out, shared=part is not None).acquire(), others=False)
        try:
            sole = lock is not None and lock.supported and not lock.shared
            if lock is not None and not lock.supported:
                stderr.print(f"[yellow]note:[/] {escape(str(out.parent))} does not support file locks: nothing stops "
                             "another run on this cache at the same time", soft_wrap=True)
            plan = team.leader_first(lambda: make_plan(source, Path(out), cfg, precision, sole_writer=sole))
            plan.shards, plan.texts = team.share((plan.shards, plan.texts))  # every rank splits the leader's list
            mine = plan.share(part, team.rank, team.size, team.leader)
            encoders, compile_seconds = apply_levers(_load_encoders(mine, cfg, device, precision), cfg, device,
                                                     precision)
            _check_space(plan.share(part, 0, 1, leader=True), encoders, source, cfg, merging=part is None)
            encoded, clock = encode_shards(source, mine.job, {p: encoders[p] for p in mine.shards}, mine.shards, cfg,
                                           halt, shown=team.leader)
            write_texts(mine.job, mine.texts, encoders.get(mine.image_path))
            encoded = sum(team.gather(encoded))  # also waits for every rank's shards
            halt.check()
            merged = merge(plan.job) if part is None and team.leader else False
        finally:
            if lock is not None:
                lock.release()
    failures = {}
    if part is None and team.leader:
        with CacheReader(out) as cache:
            failures = cache.failures()
    if compile_seconds:
        clock = {COMPILING: compile_seconds, **clock}
    return {"cache": str(out), "rows": len(source.items), "encoded_rows": encoded, "failures": failures,
            "loaded": sorted(encoders), "merged": merged, "ignored_files": source.ignored, "seconds": clock,
            "rank": team.rank, "part": part}


def counts(summary: dict) -> str:
    """The summary's items in words that add up: encoded now + encoded earlier + failed = items."""
    items, encoded, failed = summary["rows"], summary["encoded_rows"], len(summary["failures"])
    earlier = items - encoded - failed
    parts = [f"{encoded} encoded", *([f"{earlier} encoded earlier"] if earlier else []),
             *([f"{failed} failed"] if failed else [])]
    return f"{items} item{'' if items == 1 else 's'}: {', '.join(parts)}"


def _check_space(plan: Plan, encoders: dict[str, ImageEncoder], source: Source, cfg: ExtractConfig,
                 merging: bool) -> None:
    """Refuse before encoding when the disk clearly cannot hold the job's shards (every rank's; and the merged
    cache when the job merges). `encoders` are this rank's; a rank with no work has no widths to check."""
    frames = None if source.items.frame_index is None else source.items.frame_index.shape[1]
    if not encoders:
        return
    new = plan.new_bytes({p: e.width for p, e in encoders.items()}, frames, cfg.store_dtype)
    plan.job.require_space(
        new,
        merging,
        hint=(
            f", estimated for {sum(b - a for r in plan.shards.values() for a, b in r)} rows of features"
            f" as {cfg.store_dtype}{' and the prompts' if plan.texts else ''}"
            f"{', then the merged cache beside the old one' if merging else ''}"
            "; free space or choose another --out"
        ),
    )


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
