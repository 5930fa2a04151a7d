"""Stage one's speed levers, each on its own, on the checkpoints' architectures: e2e faces/s and fp8's error table.

One lever per run (`--lever`), so each gain is measured alone against the same
run's `none` (bf16 autocast, eager: what `extract` does by default):
bf16-weights = `--clip-weights bfloat16`; compile = `--compile on` (compile time
= the warm-up extraction's `compiling` seconds, and whether compiling pays at
the paper's 48,640 faces including it); fp8 = `--precision fp8`, plus fp8's
error table: per encoder, the least, 0.1th-percentile and mean row cosine of
fp8 and of bf16 features to float32 ones of the same weights, over
`--error-faces` drawn JPEG faces (the float32 teacher is slow: its face count is
`--error-teacher-faces`). Models, faces and injection are stage_one.py's.
Run: python benchmarks/levers.py --lever none|bf16-weights|compile|fp8 [--faces N] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import stage_one  # noqa: E402  benchmarks/, beside this script
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from expclip.stages.encoders.base import ImageEncoder
from expclip.stages.encoders.towers import bf16_weights, towers
from expclip.stages.extract import ExtractConfig, extraction, sources
from expclip.stages.extract.config import default_workers
from expclip.stages.extract.levers import COMPILING
from expclip.stages.extract.loading import FaceDataset, collate
from expclip.stages.shared.fp8 import to_fp8

LEVERS = {"none": {}, "bf16-weights": {"clip_weights": "bfloat16", "precision": "bf16"},
          "compile": {"compile": "on"}, "fp8": {"precision": "fp8"}}
PAPER_FACES = 48_640  # the paper's training set: where compiling must pay, its compile time included


def timed(warm_up: sources.Source, faces: sources.Source, out: Path, cfg: ExtractConfig) -> tuple[float, float]:
    """(faces/s of the timed extraction, compile seconds of the warm-up one, whose towers compile first)."""
    first = extraction.extract(warm_up, out.with_name(f"{out.stem}-warm-up.h5"), cfg)
    started = time.perf_counter()
    extraction.extract(faces, out, cfg)
    return len(faces.items) / (time.perf_counter() - started), first["seconds"].get(COMPILING, 0.0)


def features(encoder: ImageEncoder, faces: sources.Source, n: int, batch_size: int, workers: int) -> torch.Tensor:
    """(n, D) float32 features of the first `n` faces on the CPU, as the encoder is now."""
    data = FaceDataset(faces.paths[:n], faces.items, [encoder.transform])
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return torch.cat([encoder.encode_images(tensors[0]).cpu() for _, tensors, _ in loader])


def cosines(low: torch.Tensor, high: torch.Tensor) -> str:
    """least / 0.1th percentile / mean row cosine."""
    c = torch.nn.functional.cosine_similarity(low, high).double()
    return f"{c.min():.5f} / {torch.quantile(c, 0.001):.5f} / {c.mean():.5f}"


def fp8_errors(encoder: ImageEncoder, faces: sources.Source, n: int, args: argparse.Namespace) -> str:
    """One line of the error table: float32, bf16 (as extract runs it) and fp8 features of the same weights;
    leaves the encoder converted to fp8, as `--precision fp8` would."""
    model = encoder.model
    loaded = next(model.parameters()).dtype
    model.to(torch.bfloat16).float()  # CLIP's float32 weights rounded to bf16: the three runs share exact weights
    run = [args.batch_size, args.workers]
    exact = features(dataclasses.replace(encoder, precision="fp32"), faces, n, *run)
    model.to(loaded)
    bf16 = features(dataclasses.replace(encoder, precision="bf16"), faces, n, *run)
    bf16_weights(model)  # what `--precision fp8` does to CLIP first (the teacher loads in bf16)
    converted = sum(to_fp8(tower, encoder.device) for tower in towers(encoder).values())
    fp8 = features(dataclasses.replace(encoder, precision="fp8"), faces, n, *run)
    return (f"{len(exact):,} faces, {converted} linear layers in fp8: fp8 {cosines(fp8, exact)}; "
            f"bf16 {cosines(bf16, exact)}")


def main(argv: list[str] | None = None) -> None:
    """Measure one lever on CLIP alone and CLIP + teacher; print one line each (and fp8's error table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", choices=tuple(LEVERS), default="none")
    parser.add_argument("--faces", type=int, help="faces in each timed extraction (default 10,240; tiny: 64)")
    parser.add_argument("--error-faces", type=int, default=10_240, help="fp8 error table, CLIP")
    parser.add_argument("--error-teacher-faces", type=int, default=10_240, help="fp8 error table, teacher")
    parser.add_argument("--batch-size", type=int, help="default 256; tiny: 32")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny models (the default without CUDA)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = device.type == "cuda" and not args.tiny
    args.faces = args.faces or (10_240 if real else 64)
    args.batch_size = args.batch_size or (256 if real else 32)
    console, log = Console(width=200), Console(stderr=True)
    precision = "bf16"  # every lever against bf16 autocast; fp8 runs in bf16 outside its linear layers
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        faces = stage_one.write_faces(root / "faces", args.faces, args.workers, seed=1)
        warm_up = stage_one.write_faces(root / "warm-up", 2 * args.batch_size, args.workers, seed=2)
        clip_name = "ViT-L-14" if real else stage_one.save_tiny_clip(root / "tiny-clip", image_size=224)
        clip = stage_one.random_clip(clip_name, device, precision, stage_one.CLIP_TAG if real else None)
        folder = stage_one.teacher_folder(root, real)
        teacher = stage_one.random_teacher(folder, device, precision)
        if args.lever == "fp8":  # first: it needs the weights before their conversion
            most = max(args.error_faces, args.error_teacher_faces)
            errors = stage_one.write_faces(root / "errors", most, args.workers, seed=3)
            for name, encoder, n in (("CLIP", clip, args.error_faces), ("teacher", teacher, args.error_teacher_faces)):
                lines.append(f"fp8 error, {name} (least / 0.1th pct / mean row cosine to float32): "
                             + fp8_errors(encoder, errors, n, args))
                log.print(lines[-1])
        common = dict(clip_model=clip_name, batch_size=args.batch_size, num_workers=args.workers,
                      device=device.type, **{"precision": precision, **LEVERS[args.lever]})
        for name, with_teacher in (("CLIP alone", None), ("CLIP + teacher", teacher)):
            cfg = ExtractConfig(teacher=str(folder) if with_teacher else None, **common)
            with stage_one.injected(clip, with_teacher):
                rate, compiled = timed(warm_up, faces, root / f"{len(lines)}.h5", cfg)
            lines.append(f"{name}, lever {args.lever}: {rate:,.0f} faces/s e2e; compile {compiled:.1f} s; the "
                         f"paper's {PAPER_FACES:,} faces in {PAPER_FACES / rate + compiled:.0f} s including it")
            log.print(lines[-1])
    console.print(f"{args.faces:,} faces per timed extraction, batch {args.batch_size}, {device}", markup=False)
    for line in lines:
        console.print(line, markup=False)


if __name__ == "__main__":
    main()
