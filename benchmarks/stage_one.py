"""Stage one at the paper's sizes: faces/s of `expclip extract` end to end and of the encoders alone, with MFU.

No pretrained weights can be fetched, so the real architectures are built with
random weights directly on the device (no host copy, nothing written to disk):
open_clip ViT-L-14, and BLIP-2 Flan-T5-XXL (EVA ViT-g, the Q-Former, the language
projection and the full 24-layer T5-XXL encoder). Their parameters take the dtypes
the real loaders give them (CLIP float32 under bf16 autocast, the teacher bf16),
and they enter the real `extract` through its one loading seam,
`extraction._load_encoders`, so decoding, transforms, shard writes and the merge are
the ones users run. The teacher folder holds only config.json and the demo's
tiny tokenizer and processor, whose whole-word tokens make the instruction 22
tokens long; Flan-T5's SentencePiece likely splits a few words more, so the T5
input (shown in the table) may be slightly shorter than the real one.

Each configuration (CLIP alone, i.e. `--no-teacher`; CLIP + teacher) first
extracts two batches into a cache of its own (CUDA and kernel start-up), then
extracts `--faces` JPEG faces into a fresh cache: end-to-end faces/s is faces /
wall time of that call (planning, DataLoader start, text features, shard writes
and the merge included; reading weights excluded; the JPEGs are in the page
cache), and the same call again on the complete cache must encode nothing.
Beside it: its summary's time split, peak GPU memory, the encoders alone on a
resident batch ("plain"), FLOP per face counted by torch on a few faces, MFU
against a square matmul measured in the same run, and the least cosine between
bf16 and float32 features of the same weights (random weights lack trained
activation outliers: this checks the bf16 code path, not a checkpoint's error).
Results are logged to stderr as they come, so a run cut short still shows them.

Without CUDA, or with --tiny, the demo's tiny models run instead: a smoke test.
The default size is chosen from the issue's anchors (20,480 faces at 380 faces/s
take under a minute a pass) to fit well within 8 minutes on one H100.
Run: python benchmarks/stage_one.py [--faces 20480] [--batch-size 256] [--workers N] [--tiny] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from machine import describe  # noqa: E402  benchmarks/, beside this script
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor  # noqa: E402

from expclip.demo import synthetic  # noqa: E402
from expclip.demo.checkpoints import save_tiny_blip2, save_tiny_clip  # noqa: E402
from expclip.stages.encoders import clip as clip_encoder  # noqa: E402
from expclip.stages.encoders import teacher as teacher_encoder  # noqa: E402
from expclip.stages.encoders.base import ImageEncoder, TeacherSpec  # noqa: E402
from expclip.stages.encoders.blip2_t5 import Blip2T5Teacher, drop_t5_decoder  # noqa: E402
from expclip.stages.extract import ExtractConfig, extraction, sources  # noqa: E402
from expclip.stages.extract.config import default_workers  # noqa: E402
from expclip.stages.extract.plan import Plan  # noqa: E402
from expclip.stages.shared.precision import resolve_precision, torch_dtype  # noqa: E402
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION, class_order  # noqa: E402
from expclip.stages.shared.vocabulary import MODEL_TRANSFORM  # noqa: E402

IMAGE_SIZE = 224  # both models' input; the tiny ones are built for it too, so transforms cost the same
CLASSES = class_order()[:7]
WARM_UP_BATCHES, PLAIN_REPEATS, CHECK_FACES, COUNT_FACES = 2, 5, 16, 4
# BLIP-2 Flan-T5-XXL's published configuration, laid over the demo's tiny BLIP-2 config.
REAL_TEACHER = {
    "vision_config": {
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 39,
        "num_attention_heads": 16,
        "patch_size": 14,
    },
    "qformer_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "text_config": {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64, "num_layers": 24, "vocab_size": 32128},
}
# Issue 8: targets end to end, and one H100's plain eager bf16 rates at batch 256 (the starting point).
TARGET_CLIP, TARGET_BOTH, TARGET_MFU = 2000, 425, 0.70
ANCHOR_CLIP, ANCHOR_TEACHER = 2251, 380
SPLIT = ("waiting for data", "encoding", "writing shards")  # the keys of `extract`'s summary["seconds"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of square matmuls measured here, MFU's denominator (8192³ on CUDA, 1024³ on the CPU)."""
    n, repeats = (8192, 50) if device.type == "cuda" else (1024, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty_like(a)
    for _ in range(repeats // 5 or 1):  # clocks and cuBLAS heuristics settle first
        torch.matmul(a, b, out=c)
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b, out=c)
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def _draw(folder: Path, start: int, stop: int, seed: int) -> None:
    """Faces start..stop-1, face i of class i mod 7, as folder/<class>/<i>.jpg."""
    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):
        name = CLASSES[i % len(CLASSES)]
        face = synthetic.draw_face(synthetic.expression_of(name), IMAGE_SIZE, rng)
        face.save(folder / name / f"{i:06d}.jpg", quality=90)


def write_faces(folder: Path, n: int, workers: int, seed: int) -> sources.Source:
    """`n` JPEG faces in class folders, drawn by `workers` processes (about 7 ms a face in one)."""
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    step = -(-n // (4 * max(workers, 1)))
    with ProcessPoolExecutor(max(workers, 1)) as pool:
        list(pool.map(_draw, *zip(*[(folder, a, min(a + step, n), seed) for a in range(0, n, step)])))
    return sources.resolve(folder)


@contextmanager
def built_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters on `device` in `dtype`, so a 6 B-parameter teacher never occupies host memory."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def random_clip(name: str, device: torch.device, precision: str) -> clip_encoder.ClipEncoder:
    """What `load_clip` returns for `name`, with random float32 parameters instead of the checkpoint's."""
    key, config = clip_encoder.identity(name, None, MODEL_TRANSFORM, precision)
    with built_on(device, torch.float32):
        model, _, preprocess = open_clip.create_model_and_transforms(config["model"], load_weights=False, device=device)
    return clip_encoder.ClipEncoder.wrap(model, config["model"], preprocess, key=key, config=config, device=device,
                                         precision=precision)


def teacher_folder(root: Path, sizes: dict[str, dict]) -> Path:
    """A BLIP-2 Flan-T5 folder as far as the teacher's identity reads one: config.json and processor, no weights.

    The demo's tiny checkpoint lends its trained tokenizer, processor and config; `sizes` overrides config fields.
    """
    donor = save_tiny_blip2(root / "tiny-blip2", image_size=IMAGE_SIZE)
    tiny = Blip2Config.from_pretrained(donor)
    parts = {part: {**getattr(tiny, part).to_dict(), **sizes.get(part, {})} for part in REAL_TEACHER}
    config = Blip2Config(**parts, num_query_tokens=tiny.num_query_tokens, image_token_index=tiny.image_token_index)
    folder = root / ("blip2-flan-t5-xxl-random" if sizes else "blip2-tiny-random")
    config.save_pretrained(folder)
    Blip2Processor.from_pretrained(donor).save_pretrained(folder)
    return folder


def random_teacher(folder: Path, device: torch.device, precision: str) -> Blip2T5Teacher:
    """What `load_teacher` returns for `folder`, with random parameters in the loader's dtype."""
    key, instruction_key, config = teacher_encoder.identity(
        str(folder), DEFAULT_INSTRUCTION, MODEL_TRANSFORM, precision
    )
    spec = TeacherSpec(config["family"], config["model"], DEFAULT_INSTRUCTION, MODEL_TRANSFORM, precision, key,
                       instruction_key)
    with built_on(device, torch_dtype(precision)):
        model = Blip2ForConditionalGeneration(Blip2Config.from_pretrained(folder))
    drop_t5_decoder(model)
    return Blip2T5Teacher.from_loaded(spec, model, Blip2Processor.from_pretrained(folder), device)


@contextmanager
def injected(clip: ImageEncoder, teacher: ImageEncoder | None) -> Iterator[None]:
    """`extract` gets these encoders where it would load the plan's checkpoints."""
    def load(plan: Plan, cfg: ExtractConfig, device: torch.device, precision: str) -> dict[str, ImageEncoder]:
        found = {plan.image_path: clip} if plan.needs_clip else {}
        if plan.needs_teacher:
            found[plan.teacher_path] = teacher
        return found

    with mock.patch.object(extraction, "_load_encoders", load):
        yield


@dataclass
class EndToEnd:
    """One configuration's timed extraction."""

    rate: float  # faces/s
    split: dict[str, float]
    peak_gib: float | None
    rerun: float

    def __str__(self) -> str:
        split = ", ".join(f"{part} {self.split[part]:.1f} s" for part in SPLIT)
        peak = f", peak GPU {self.peak_gib:.1f} GiB" if self.peak_gib is not None else ""
        return f"{self.rate:,.0f} faces/s ({split}{peak}); re-run {self.rerun:.1f} s"


@dataclass
class Alone:
    """An encoder measured alone on resident tensors."""

    seconds: float  # per face
    flop: float  # per face
    cosine: float

    def __str__(self) -> str:
        return f"{1 / self.seconds:,.0f} faces/s, {self.flop / 1e9:.3g} GFLOP/face, bf16 cos {self.cosine:.4f}"


@dataclass
class Row:
    """One line of the table: an encoder configuration, end to end where it ran so."""

    name: str
    plain: float  # faces/s of the encoders alone
    flop: float  # per face
    cosine: float  # least bf16-vs-float32 cosine
    target: str
    e2e: EndToEnd | None = None


def end_to_end(warm_up: sources.Source, faces: sources.Source, out: Path, cfg: ExtractConfig,
               device: torch.device) -> EndToEnd:
    """The full extraction after a warm-up one, then again on the complete cache (which must encode nothing)."""
    extraction.extract(warm_up, out.with_name(f"{out.stem}-warm-up.h5"), cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = extraction.extract(faces, out, cfg)
    rate = len(faces.items) / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    started = time.perf_counter()
    again = extraction.extract(faces, out, cfg)
    if again["encoded_rows"] or again["loaded"]:
        raise RuntimeError(f"a complete cache was encoded again: {again}")
    return EndToEnd(rate, summary["seconds"], peak, time.perf_counter() - started)


def seconds_per_face(encoder: ImageEncoder, pixels: torch.Tensor) -> float:
    """The encoder alone on a resident batch (rows stay on the device: one copy to the CPU at the end waits
    for all the work)."""
    encoder.encode_images(pixels).cpu()
    started = time.perf_counter()
    for _ in range(PLAIN_REPEATS):
        rows = encoder.encode_images(pixels)
    rows.cpu()
    return (time.perf_counter() - started) / (PLAIN_REPEATS * len(pixels))


def flop_per_face(encoder: ImageEncoder, pixels: torch.Tensor) -> float:
    """Counted by torch on a few faces (on the CPU its attention kernel is not counted: a few % less).

    MultiheadAttention's fused fast path (taken without autocast) would hide its projections from the
    counter, so it is off meanwhile.
    """
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            encoder.encode_images(pixels)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return counter.get_total_flops() / len(pixels)


def bf16_cosine(encoder: ImageEncoder, pixels: torch.Tensor) -> float:
    """Least cosine over faces between bf16-autocast and float32 features of the same (bf16-representable) weights."""
    low = dataclasses.replace(encoder, precision="bf16").encode_images(pixels)
    dtype = next(encoder.model.parameters()).dtype
    encoder.model.float()
    high = dataclasses.replace(encoder, precision="fp32").encode_images(pixels)
    encoder.model.to(dtype)
    return torch.nn.functional.cosine_similarity(low, high).min().item()


def alone(encoder: ImageEncoder, batch_size: int, device: torch.device) -> Alone:
    pixels = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    return Alone(seconds_per_face(encoder, pixels), flop_per_face(encoder, pixels[:COUNT_FACES]),
                 bf16_cosine(encoder, pixels[:CHECK_FACES]))


def _target(goal: str, ok: bool, real: bool, anchor: str = "") -> str:
    return f"{goal}: {'met' if ok else 'MISSED'}{anchor}" if real else "n/a (tiny)"


def measure(args: argparse.Namespace, root: Path, device: torch.device, real: bool, peak: float,
            log: Console) -> list[Row]:
    """The three rows: CLIP alone, CLIP + teacher, the teacher alone (plain only); each result is logged at once."""
    precision = resolve_precision("auto", device)
    log.print(f"writing {args.faces + args.warm_up:,} JPEG faces ({args.workers} processes) …")
    faces = write_faces(root / "faces", args.faces, args.workers, seed=1)
    warm_up = write_faces(root / "warm-up", args.warm_up, args.workers, seed=2)
    clip_name = "ViT-L-14" if real else save_tiny_clip(root / "tiny-clip", image_size=IMAGE_SIZE)
    log.print(f"building the CLIP model on {device} …")
    clip = random_clip(clip_name, device, precision)
    common = dict(clip_model=clip_name, batch_size=args.batch_size, num_workers=args.workers, device=device.type)
    with injected(clip, None):
        log.print("CLIP alone: warm-up, timed extraction, re-run …")
        clip_e2e = end_to_end(warm_up, faces, root / "clip.h5", ExtractConfig(teacher=None, **common), device)
    log.print(f"CLIP alone end to end: {clip_e2e}")
    clip_alone = alone(clip, args.batch_size, device)
    log.print(f"CLIP encoder alone: {clip_alone}")

    folder = teacher_folder(root, REAL_TEACHER if real else {})
    log.print(f"building the teacher on {device} …")
    teacher = random_teacher(folder, device, precision)
    with injected(clip, teacher):
        log.print("CLIP + teacher: warm-up, timed extraction, re-run …")
        both_e2e = end_to_end(warm_up, faces, root / "clip-teacher.h5", ExtractConfig(teacher=str(folder), **common),
                              device)
    log.print(f"CLIP + teacher end to end: {both_e2e}")
    teacher_alone = alone(teacher, args.batch_size, device)
    log.print(f"teacher alone: {teacher_alone}")

    both_flop = clip_alone.flop + teacher_alone.flop
    both_ok = both_e2e.rate >= TARGET_BOTH and both_flop * both_e2e.rate / peak >= TARGET_MFU
    return [
        Row("CLIP alone (--no-teacher)", 1 / clip_alone.seconds, clip_alone.flop, clip_alone.cosine,
            _target(f"≥ {TARGET_CLIP:,} e2e", clip_e2e.rate >= TARGET_CLIP, real, f" (plain anchor {ANCHOR_CLIP:,})"),
            clip_e2e),
        Row("CLIP + teacher", 1 / (clip_alone.seconds + teacher_alone.seconds), both_flop,
            min(clip_alone.cosine, teacher_alone.cosine),
            _target(f"≥ {TARGET_BOTH} e2e & MFU ≥ {TARGET_MFU:.0%}", both_ok, real), both_e2e),
        Row(f"  teacher alone, T5 input {teacher.model.config.num_query_tokens + teacher.instruction_ids.shape[1]}",
            1 / teacher_alone.seconds, teacher_alone.flop, teacher_alone.cosine,
            f"plain anchor {ANCHOR_TEACHER}" if real else ""),
    ]


def table(rows: list[Row], peak: float) -> Table:
    out = Table(title="expclip extract (stage one)")
    for column in ("configuration", "e2e faces/s", "plain faces/s", "wait/encode/write s", "GPU peak GiB",
                   "GFLOP/face", "MFU e2e/plain", "bf16 cos", "re-run s", "target faces/s"):
        out.add_column(column, justify="left" if column in ("configuration", "target faces/s") else "right")
    for r in rows:
        e = r.e2e
        mfu = (f"{r.flop * e.rate / peak:.0%}/" if e else "") + f"{r.flop * r.plain / peak:.0%}"
        out.add_row(r.name, f"{e.rate:,.0f}" if e else "", f"{r.plain:,.0f}",
                    "/".join(f"{e.split[part]:.1f}" for part in SPLIT) if e else "",
                    f"{e.peak_gib:.1f}" if e and e.peak_gib is not None else "", f"{r.flop / 1e9:.3g}", mfu,
                    f"{r.cosine:.4f}", f"{e.rerun:.1f}" if e else "", r.target)
    return out


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure, print what ran where and the table; returns the rows (the smoke test reads them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, help="faces in the timed extraction (default 20,480; tiny: 192)")
    parser.add_argument("--batch-size", type=int, help="default 256; tiny: 32")
    parser.add_argument("--workers", type=int, default=default_workers(), help="DataLoader workers and face drawers")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny models (the default without CUDA)")
    parser.add_argument("--workdir", type=Path, help="keep faces and caches here (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = device.type == "cuda" and not args.tiny
    args.faces = args.faces or (20_480 if real else 192)
    args.batch_size = args.batch_size or (256 if real else 32)
    args.warm_up = WARM_UP_BATCHES * args.batch_size
    dtype = torch_dtype(resolve_precision("auto", device))
    console, log = Console(width=200), Console(stderr=True)
    console.print(describe())
    log.print(f"measuring the {str(dtype).removeprefix('torch.')} matmul rate on {device} …")
    peak = matmul_flops(device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = measure(args, root, device, real, peak, log)
    models = ("CLIP = open_clip ViT-L-14; teacher = BLIP-2 Flan-T5-XXL (EVA ViT-g, Q-Former, 24-layer T5-XXL encoder)"
              if real else "CLIP and teacher = the demo's tiny models (smoke test)")
    console.print(f"{models}, random weights; {args.faces:,} JPEG faces of {IMAGE_SIZE} px after {args.warm_up:,} "
                  f"warm-up ones; {device}, {str(dtype).removeprefix('torch.')}, batch {args.batch_size}, "
                  f"{args.workers} workers")
    console.print(f"MFU against {peak / 1e12:.3g} TFLOP/s, a square matmul measured now; plain = the encoders alone "
                  "on a resident batch")
    console.print("bf16 cos = least cosine of bf16 and float32 features; re-run = extract again on the complete cache")
    console.print(table(rows, peak))
    return rows


if __name__ == "__main__":
    main()
