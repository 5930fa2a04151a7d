"""Stage one: run the frozen encoders once over a source and write the feature cache.

Work is cut into shards of consecutive rows (see docs/cache-format.md,
*Resuming*); batches never cross a shard, so a resumed run feeds the encoders
exactly the batches an uninterrupted run would. Only groups missing from the
cache are encoded, and only the encoders they need are loaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.cache.writer import Extraction
from expclip.base.errors import ExpclipError
from expclip.stages.shared import protocol
from expclip.stages.shared.devices import resolve_device
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.encoders import clip as clip_encoder
from expclip.stages.extract.encoders import teacher as teacher_encoder
from expclip.stages.extract.prompts import load_prompt_file, text_rows
from expclip.stages.shared.precision import resolve_precision
from expclip.stages.extract.loading import FaceDataset, collate
from expclip.stages.shared.progress import progress, stderr
from expclip.stages.extract.sources import Source

def _shard_batches(ranges: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    return [list(range(a, min(a + batch_size, b))) for start, b in ranges for a in range(start, b, batch_size)]


def extract(source: Source, out: Path, cfg: ExtractConfig) -> dict:
    """Encode what the cache at `out` lacks; returns a summary (rows encoded, failures, groups)."""
    cfg.check()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    items = source.items
    job = Extraction(out, items, {"dataset": source.dataset, "source": str(source.origin)}, shard_size=cfg.shard_size)

    clip_key, clip_config = clip_encoder.identity(cfg.clip_model, cfg.clip_pretrained, cfg.transform, precision)
    image_path = fmt.image_path(clip_key)
    need_image = job.need(image_path, clip_config)
    sets = {**protocol.prompt_sets(), **(load_prompt_file(cfg.prompts) if cfg.prompts else {})}
    text_todo = {}
    for name, prompt_set in sets.items():
        prompts, class_index = text_rows(prompt_set)
        text_config = {k: v for k, v in clip_config.items() if k != "transform"}
        text_config["prompts_sha256"] = fmt.digest([np.frombuffer(json.dumps([prompts, class_index]).encode(), dtype=np.uint8)])
        if job.need_small(fmt.text_path(clip_key, name), text_config):
            text_todo[name] = (prompts, class_index, text_config)

    teacher_path = None
    if cfg.teacher is not None and items.kind == "clips":
        stderr.print("[yellow]note:[/] clip lists are evaluation data; teacher features are not extracted for them")
    elif cfg.teacher is not None:
        t_key, i_key, t_config = teacher_encoder.identity(cfg.teacher, cfg.instruction, cfg.transform, precision)
        teacher_path = fmt.teacher_path(t_key, i_key)
        if not job.need(teacher_path, t_config):
            teacher_path = None

    encoders = {}
    if (need_image and job.missing(image_path)) or text_todo:
        encoders[image_path] = clip_encoder.load_clip(
            cfg.clip_model, cfg.clip_pretrained, device=device, precision=precision, transform=cfg.transform
        )
    if teacher_path and job.missing(teacher_path):
        encoders[teacher_path] = teacher_encoder.load_teacher(
            cfg.teacher, cfg.instruction, device=device, precision=precision, transform=cfg.transform
        )
    encoded, clock = _encode_rows(source, job, {p: e for p, e in encoders.items() if job.missing(p)}, cfg)

    for name, (prompts, class_index, text_config) in text_todo.items():
        features = encoders[image_path].encode_texts(prompts).numpy().astype(np.float32)
        job.write_small(fmt.text_path(clip_key, name), features, {
            **text_config, "prompts": prompts, "class_names": protocol.class_order(), "class_index": class_index,
        })
    if job.partial.exists():
        unfinished = job.unfinished()
        if unfinished:
            raise ExpclipError(
                f"{job.partial}: an earlier run left unfinished groups this run does not extract "
                f"({', '.join('/' + p for p in unfinished)}); re-run with that run's options, or delete the folder"
            )
        job.finalize()
    with CacheReader(out) as cache:
        failures = cache.failures()
    return {"cache": str(out), "rows": len(items), "encoded_rows": encoded, "failures": failures,
            "loaded": sorted(encoders), "ignored_files": source.ignored, "seconds": clock}


def _encode_rows(source: Source, job: Extraction, encoders: dict, cfg: ExtractConfig) -> tuple[int, dict[str, float]]:
    """Run the loaded encoders over the shards any of them still miss; write shard files.

    Returns the rows encoded and where the time went (waiting for the DataLoader,
    encoding, writing shards), so a slow run shows its bottleneck.
    """
    clock = {"waiting for data": 0.0, "encoding": 0.0, "writing shards": 0.0}
    if not encoders:
        return 0, clock
    clips = source.items.frame_index is not None
    transforms, slots, shared = [], {}, {}
    for path, enc in encoders.items():
        key = "official" if cfg.transform == "exp-clip-official" else path  # one tensor feeds both
        if key not in shared:
            shared[key] = len(transforms)
            transforms.append(enc.transform)
        slots[path] = shared[key]
    missing = {path: set(job.missing(path)) for path in encoders}  # one stat per shard, not per batch
    todo = sorted(set().union(*missing.values()))
    dataset = FaceDataset(source.paths, source.items, transforms)
    loader = DataLoader(
        dataset, batch_sampler=_shard_batches(todo, cfg.batch_size), num_workers=cfg.num_workers,
        collate_fn=collate, pin_memory=any(e.device.type == "cuda" for e in encoders.values()),
    )
    buffers: dict[str, list[np.ndarray]] = {p: [] for p in encoders}
    failed: dict[int, str] = {}
    shards = iter(todo)
    start, stop = next(shards)
    with progress("clips" if clips else "faces") as bar:
        task = bar.add_task("extract", total=sum(b - a for a, b in todo))
        tick = time.perf_counter()
        for index, tensors, reasons in loader:
            tick = _lap(clock, "waiting for data", tick)
            for path, enc in encoders.items():
                x = tensors[slots[path]].to(enc.device, non_blocking=True)
                rows = enc.encode_images(x.flatten(0, 1)) if clips else enc.encode_images(x)
                rows = rows.reshape(len(index), *(x.shape[1:2] if clips else ()), -1).float().cpu().numpy()
                if not job.started(path):
                    job.start(path, enc.attrs, tuple(rows.shape[1:]), cfg.store_dtype)
                buffers[path].append(rows)
            failed.update({i: r for i, r in zip(index, reasons, strict=True) if r})
            bar.advance(task, len(index))
            tick = _lap(clock, "encoding", tick)
            if index[-1] == stop - 1:
                for path in encoders:
                    if (start, stop) in missing[path]:
                        rows = np.concatenate(buffers[path])
                        rows[[i - start for i in failed]] = np.nan
                        job.write_shard(path, start, stop, rows, failed)
                    buffers[path] = []
                failed = {}
                start, stop = next(shards, (None, None))
                tick = _lap(clock, "writing shards", tick)
    return sum(b - a for a, b in todo), clock


def _lap(clock: dict[str, float], what: str, since: float) -> float:
    now = time.perf_counter()
    clock[what] += now - since
    return now
