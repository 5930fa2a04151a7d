"""Stage one at the paper's sizes: `expclip extract` end to end against the plain script, in the same run.

No pretrained weights can be fetched, so the checkpoints' exact architectures are
built with random weights directly on the device: open_clip ViT-L-14 as the
`openai` tag configures it (QuickGELU), and BLIP-2 Flan-T5-XXL from its
config.json's fields (FLAN_T5_XXL below; EVA ViT-g, the Q-Former, the language
projection, the 24-layer T5-XXL encoder) in the dtypes the real loaders give
(CLIP float32 under bf16 autocast, the teacher bf16). They enter the real
`extract` through its one loading seam, `extraction._load_encoders`, so decoding,
transforms, shard writes and the merge are the ones users run (the tokenizer is
the demo's: whole words, so Flan-T5's may make the instruction a few tokens longer).

Each configuration (CLIP alone, i.e. `--no-teacher`; CLIP + teacher) first
extracts two batches into a cache of its own (start-up), then `--faces` JPEG
faces into a fresh cache: end-to-end faces/s is faces / wall time of that call
(planning, DataLoader, text features, shard writes and the merge included), and
the same call again on the complete cache must encode nothing. The headline is
e2e ÷ script: `plain_anchor.py` runs the same modules with bf16 weights, eager,
on a resident batch. Beside it: time split, peak GPU memory, the product's encoders
alone on a resident batch, FLOP per face (torch's counter), MFU against a square
matmul of the same run, the least cosine of bf16 and float32 features.

Without CUDA, or with --tiny, the demo's tiny models run (a smoke test). Run:
python benchmarks/stage_one.py [--faces 20480] [--batch-size 256] [--workers N] [--tiny] [--workdir DIR]
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
import plain_anchor  # noqa: E402  benchmarks/, beside this script
import torch  # noqa: E402
from machine import describe  # noqa: E402
from plain_anchor import sync  # noqa: E402
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
# Salesforce/blip2-flan-t5-xxl's config.json, field by field: its text_config is Flan-T5-XXL's (below, with
# `dense_act_fn: gelu`, which T5Config alone would map from gated-gelu to the slower gelu_new); its vision_config
# and qformer_config list no sizes, so transformers builds them from Blip2VisionConfig / Blip2QFormerConfig
# defaults (EVA ViT-g/14: 1408 wide, 39 layers, 16 heads, MLP 6144; Q-Former: 768 wide, 12 layers, cross-attention
# every 2nd); num_query_tokens 32. Loaded in bf16, transformers 5 keeps no module in float32 (its
# `_keep_in_fp32_modules` apply to fp16 only): tests/test_benchmarks.py checks the dtypes against the loader's.
FLAN_T5_XXL = {
    "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64, "num_layers": 24, "num_decoder_layers": 24,
    "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu", "is_gated_act": True,
    "layer_norm_epsilon": 1e-6, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "tie_word_embeddings": False, "model_type": "t5",
}
REAL_TEACHER = {"vision_config": {}, "qformer_config": {}, "text_config": FLAN_T5_XXL, "num_query_tokens": 32}
CLIP_TAG = "openai"  # the paper's weights: their pretrained config adds QuickGELU to open_clip's architecture
TARGET_CLIP, TARGET_BOTH, TARGET_RATIO = 2000, 425, 1.0  # faces/s end to end; e2e ÷ the same-run plain script
SPLIT = ("waiting for data", "encoding", "writing shards")  # the keys of `extract`'s summary["seconds"]


def matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of square matmuls measured here, MFU's denominator (8192³ on CUDA, 1024³ on the CPU)."""
    n, repeats = (8192, 50) if device.type == "cuda" else (1024, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty_like(a)
    for _ in range(repeats // 5 or 1):  # clocks and cuBLAS heuristics settle first
        torch.matmul(a, b, out=c)
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b, out=c)
    sync(device)
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


def random_clip(name: str, device: torch.device, precision: str, tag: str | None) -> clip_encoder.ClipEncoder:
    """What `load_clip` returns for `name` and `tag`, with random float32 parameters instead of the checkpoint's."""
    key, config = clip_encoder.identity(name, None, MODEL_TRANSFORM, precision)
    quick_gelu = bool(tag and open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
    with built_on(device, torch.float32):
        model, _, preprocess = open_clip.create_model_and_transforms(
            config["model"], load_weights=False, device=device, force_quick_gelu=quick_gelu)
    return clip_encoder.ClipEncoder.wrap(model, config["model"], preprocess, key=key, config=config, device=device,
                                         precision=precision)


def teacher_folder(root: Path, real: bool) -> Path:
    """A BLIP-2 Flan-T5 folder as far as the teacher's identity reads one: config.json and processor, no weights.

    The demo's tiny checkpoint lends its tokenizer and processor, and its config when not `real` (the real one
    takes the donor's image_token_index: a token of that vocabulary, never used by the encoder).
    """
    donor = save_tiny_blip2(root / "tiny-blip2", image_size=IMAGE_SIZE)
    tiny = Blip2Config.from_pretrained(donor)
    config = Blip2Config(**REAL_TEACHER, image_token_index=tiny.image_token_index) if real else tiny
    folder = root / ("blip2-flan-t5-xxl-random" if real else "blip2-tiny-random")
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
    plain: float  # faces/s of the product's encoders alone on a resident batch
    script: float  # faces/s of the plain script (plain_anchor) on the same modules, same run
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


def _target(rate: float, script: float, goal: int, real: bool) -> str:
    if not real:
        return "n/a (tiny)"
    return (f"≥ {goal:,} e2e: {'met' if rate >= goal else 'MISSED'}; "
            f"≥ {TARGET_RATIO:.2f}× script: {'met' if rate / script >= TARGET_RATIO else 'MISSED'}")


def scripts(clip: ImageEncoder, teacher: ImageEncoder, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Faces/s of the plain script for CLIP alone and for CLIP + teacher (bf16 weights, resident batch)."""
    pixels = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    clip_forward = plain_anchor.clip_forward(plain_anchor.bf16_copy(clip.model))
    model = teacher.model
    if next(model.parameters()).dtype != torch.bfloat16:  # the loader gives bf16 on CUDA; the tiny CPU run fp32
        model = plain_anchor.bf16_copy(model)
    teacher_forward = plain_anchor.teacher_forward(model, teacher.instruction_ids)
    return (plain_anchor.faces_per_second([clip_forward], pixels),
            plain_anchor.faces_per_second([clip_forward, teacher_forward], pixels))


def measure(args: argparse.Namespace, root: Path, device: torch.device, real: bool, log: Console) -> list[Row]:
    """The three rows: CLIP alone, CLIP + teacher, the teacher alone (plain only); each result is logged at once."""
    precision = resolve_precision("auto", device)
    log.print(f"writing {args.faces + args.warm_up:,} JPEG faces ({args.workers} processes) …")
    faces = write_faces(root / "faces", args.faces, args.workers, seed=1)
    warm_up = write_faces(root / "warm-up", args.warm_up, args.workers, seed=2)
    clip_name = "ViT-L-14" if real else save_tiny_clip(root / "tiny-clip", image_size=IMAGE_SIZE)
    log.print(f"building the CLIP model on {device} …")
    clip = random_clip(clip_name, device, precision, CLIP_TAG if real else None)
    common = dict(clip_model=clip_name, batch_size=args.batch_size, num_workers=args.workers, device=device.type)
    with injected(clip, None):
        log.print("CLIP alone: warm-up, timed extraction, re-run …")
        clip_e2e = end_to_end(warm_up, faces, root / "clip.h5", ExtractConfig(teacher=None, **common), device)
    log.print(f"CLIP alone end to end: {clip_e2e}")
    clip_alone = alone(clip, args.batch_size, device)
    log.print(f"CLIP encoder alone: {clip_alone}")

    folder = teacher_folder(root, real)
    log.print(f"building the teacher on {device} …")
    teacher = random_teacher(folder, device, precision)
    with injected(clip, teacher):
        log.print("CLIP + teacher: warm-up, timed extraction, re-run …")
        both_e2e = end_to_end(warm_up, faces, root / "clip-teacher.h5", ExtractConfig(teacher=str(folder), **common),
                              device)
    log.print(f"CLIP + teacher end to end: {both_e2e}")
    teacher_alone = alone(teacher, args.batch_size, device)
    log.print(f"teacher alone: {teacher_alone}")
    clip_script, both_script = scripts(clip, teacher, args.batch_size, device)
    log.print(f"plain script: CLIP {clip_script:,.0f} faces/s, CLIP + teacher {both_script:,.0f} faces/s")
    teacher_script = 1 / (1 / both_script - 1 / clip_script) if both_script < clip_script else float("nan")

    return [
        Row("CLIP alone (--no-teacher)", 1 / clip_alone.seconds, clip_script, clip_alone.flop, clip_alone.cosine,
            _target(clip_e2e.rate, clip_script, TARGET_CLIP, real), clip_e2e),
        Row("CLIP + teacher", 1 / (clip_alone.seconds + teacher_alone.seconds), both_script,
            clip_alone.flop + teacher_alone.flop, min(clip_alone.cosine, teacher_alone.cosine),
            _target(both_e2e.rate, both_script, TARGET_BOTH, real), both_e2e),
        Row(f"  teacher alone, T5 input {teacher.model.config.num_query_tokens + teacher.instruction_ids.shape[1]}",
            1 / teacher_alone.seconds, teacher_script, teacher_alone.flop, teacher_alone.cosine, ""),
    ]


def table(rows: list[Row], peak: float) -> Table:
    out = Table(title="expclip extract (stage one)")
    for column in ("configuration", "e2e faces/s", "script faces/s", "e2e ÷ script", "encoders faces/s",
                   "wait/encode/write s", "GPU peak GiB", "GFLOP/face", "MFU e2e/script", "bf16 cos", "re-run s",
                   "targets"):
        out.add_column(column, justify="left" if column in ("configuration", "targets") else "right")
    for r in rows:
        e = r.e2e
        mfu = (f"{r.flop * e.rate / peak:.0%}/" if e else "") + f"{r.flop * r.script / peak:.0%}"
        out.add_row(r.name, f"{e.rate:,.0f}" if e else "", f"{r.script:,.0f}", f"{e.rate / r.script:.2f}×" if e else "",
                    f"{r.plain:,.0f}", "/".join(f"{e.split[part]:.1f}" for part in SPLIT) if e else "",
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
        rows = measure(args, root, device, real, log)
    models = (f"CLIP = open_clip ViT-L-14 ({CLIP_TAG} architecture); teacher = BLIP-2 Flan-T5-XXL "
              "(EVA ViT-g, Q-Former, 24-layer T5-XXL encoder)"
              if real else "CLIP and teacher = the demo's tiny models (smoke test)")
    console.print(f"{models}, random weights; {args.faces:,} JPEG faces of {IMAGE_SIZE} px after {args.warm_up:,} "
                  f"warm-up ones; {device}, {str(dtype).removeprefix('torch.')}, batch {args.batch_size}, "
                  f"{args.workers} workers")
    console.print(f"MFU against {peak / 1e12:.3g} TFLOP/s, a square matmul measured now; script = plain_anchor.py "
                  "(bf16 weights, eager, resident batch); encoders = the product's encoders on a resident batch")
    console.print("bf16 cos = least cosine of bf16 and float32 features; re-run = extract again on the complete cache")
    console.print(table(rows, peak))
    return rows


if __name__ == "__main__":
    main()
