"""Stage one on a CUDA GPU: does bf16 extraction agree with fp32, and how many faces/s?

No pretrained weights can be fetched here, so the encoders are random: tiny ones
for the agreement check, and real-width ones for speed (open_clip ViT-L-14; BLIP-2
with the full ViT-g and a BERT-base-size Q-Former, and a T5 encoder of Flan-T5-XXL's width but
only `--t5-layers` of its 24 layers). Prints one table; nothing is asserted.

    python benchmarks/extract_gpu.py [--faces 4096] [--t5-layers 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from expclip.cache.reader import CacheReader  # noqa: E402
from expclip.demo import synthetic  # noqa: E402
from expclip.stages.extract import sources  # noqa: E402
from expclip.demo.checkpoints import save_tiny_blip2, save_tiny_clip  # noqa: E402
from expclip.stages.extract import ExtractConfig, extract  # noqa: E402
from expclip.stages.shared.protocol import class_order  # noqa: E402

VIT_G = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16, "patch_size": 14}
QFORMER = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
T5_XXL = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64, "num_decoder_layers": 1, "vocab_size": 32128}


def _features(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    with CacheReader(cache) as r:
        (t, i), = r.teacher_keys()
        return r.image(r.image_keys()[0]).astype(np.float32), r.teacher(t, i).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faces", type=int, default=4096)
    parser.add_argument("--t5-layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine")
    console = Console()
    table = Table(title=f"expclip extract on {torch.cuda.get_device_name()}")
    for col in ("check", "result"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = class_order()[:7]
        synthetic.write_faces(tmp / "small", names, 16, size=64, seed=1)
        synthetic.write_faces(tmp / "faces", names, args.faces // len(names), size=96, seed=2)

        # 1. bf16 autocast on CUDA agrees with fp32 on the CPU (tiny random encoders).
        clip = save_tiny_clip(tmp / "tiny-clip", image_size=224)
        blip = save_tiny_blip2(tmp / "tiny-blip2", image_size=224)
        small = sources.resolve(tmp / "small")
        common = dict(clip_model=clip, teacher=str(blip), batch_size=64, num_workers=4)
        extract(small, tmp / "gpu.h5", ExtractConfig(device="cuda", **common))
        extract(small, tmp / "cpu.h5", ExtractConfig(device="cpu", precision="fp32", **common))
        (gi, gt), (ci, ct) = _features(tmp / "gpu.h5"), _features(tmp / "cpu.h5")
        table.add_row("bf16 CUDA vs fp32 CPU, image cosine (min / mean)", f"{_cosine(gi, ci).min():.5f} / {_cosine(gi, ci).mean():.5f}")
        table.add_row("bf16 CUDA vs fp32 CPU, teacher cosine (min / mean)", f"{_cosine(gt, ct).min():.5f} / {_cosine(gt, ct).mean():.5f}")

        # 2. Speed at real widths.
        t0 = time.perf_counter()
        big_clip = save_tiny_clip(tmp / "vit-l-14", model_cfg=open_clip.get_model_config("ViT-L-14"))
        big_blip = save_tiny_blip2(tmp / "blip2-g-t5xxl", image_size=224, vision=VIT_G, qformer=QFORMER,
                                   text={**T5_XXL, "num_layers": args.t5_layers}, dtype=torch.bfloat16)
        table.add_row("building random real-width checkpoints", f"{time.perf_counter() - t0:.1f} s")
        faces, warm = sources.resolve(tmp / "faces"), sources.resolve(tmp / "small")
        n, n_warm = len(faces.items), len(warm.items)
        speed = dict(clip_model=big_clip, batch_size=args.batch_size, num_workers=args.workers, device="cuda")
        for label, teacher, out in (
            ("CLIP ViT-L-14 only", None, "clip.h5"),
            (f"CLIP ViT-L-14 + BLIP-2 ViT-g + T5-XXL-width encoder ({args.t5_layers}/24 layers)", str(big_blip), "both.h5"),
        ):
            walls = []
            for source, name in ((warm, "warm-" + out), (faces, out)):  # the difference cancels model loading
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                summary = extract(source, tmp / name, ExtractConfig(teacher=teacher, **speed))
                walls.append(time.perf_counter() - t0)
            rate = (n - n_warm) / (walls[1] - walls[0])
            table.add_row(f"{label}: {n} faces, bf16, batch {args.batch_size}, {args.workers} workers",
                          f"{walls[1]:.1f} s wall incl. loading; {rate:.0f} faces/s marginal; "
                          f"peak GPU {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            table.add_row("  where the time went", ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items()))
        t0 = time.perf_counter()
        extract(faces, tmp / "both.h5", ExtractConfig(teacher=str(big_blip), **speed))
        table.add_row("re-run on the complete cache", f"{time.perf_counter() - t0:.2f} s (no encoder run)")
    console.print(table)


if __name__ == "__main__":
    main()
