"""`expclip demo`: the whole pipeline offline in about a minute, on tiny random encoders.

It builds real-format checkpoints (open_clip `local-dir:`, BLIP-2 `save_pretrained`)
and synthetic faces, then runs the same stages a real run does:
extract → fit-head → evaluate. The encoders are random, so the numbers are
near chance by design; the point is that every step and file is real.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from expclip.stages.shared import protocol
from expclip.stages.extract import sources
from expclip.demo import synthetic
from expclip.demo.checkpoints import save_tiny_blip2, save_tiny_clip
from expclip.stages.evaluate import evaluate
from expclip.stages.extract import ExtractConfig, extract
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.shared.heads import load_head

DEMO_CLASSES = protocol.class_order()[:7]


@dataclass
class DemoRun:
    """Where the demo put everything, and the evaluation records."""

    workdir: Path
    files: dict[str, Path]
    records: list[dict]


def run_demo(workdir: Path, *, train_per_class: int = 40, eval_per_class: int = 12, clips: int = 21, seed: int = 0) -> DemoRun:
    """Generate data and tiny checkpoints under `workdir`, then extract, fit and evaluate."""
    workdir = Path(workdir)
    files = {
        "clip": workdir / "models" / "tiny-clip",
        "teacher": workdir / "models" / "tiny-blip2-t5",
        "train_faces": workdir / "data" / "train",
        "eval_faces": workdir / "data" / "eval-images",
        "eval_clips": workdir / "data" / "eval-clips",
        "train_cache": workdir / "caches" / "train.h5",
        "eval_images_cache": workdir / "caches" / "eval-images.h5",
        "eval_clips_cache": workdir / "caches" / "eval-clips.h5",
        "head": workdir / "heads" / "demo-head",
    }
    if not files["train_faces"].exists():
        synthetic.write_faces(files["train_faces"], DEMO_CLASSES, train_per_class, seed=seed)
        synthetic.write_faces(files["eval_faces"], DEMO_CLASSES, eval_per_class, seed=seed + 1)
        rng = random.Random(seed)
        synthetic.write_clips(
            files["eval_clips"], [i % len(DEMO_CLASSES) for i in range(clips)],
            frames=[rng.choice([8, 12, 20, 24]) for _ in range(clips)], seed=seed + 2,
        )
    clip_model = save_tiny_clip(files["clip"], seed=seed)
    save_tiny_blip2(files["teacher"], seed=seed)

    common = dict(clip_model=clip_model, device="cpu", num_workers=0, batch_size=32)
    extract(sources.resolve(files["train_faces"], dataset="demo-train"), files["train_cache"],
            ExtractConfig(teacher=str(files["teacher"]), **common))
    extract(sources.resolve(files["eval_faces"], dataset="demo-images"), files["eval_images_cache"],
            ExtractConfig(teacher=None, **common))
    extract(sources.resolve(files["eval_clips"] / "annotations.txt", dataset="demo-clips"), files["eval_clips_cache"],
            ExtractConfig(teacher=None, **common))

    fit_head([files["train_cache"]], files["head"], FitConfig(batch_size=64, seed=seed, device="cpu"))
    records = evaluate(load_head(files["head"]), [files["eval_images_cache"], files["eval_clips_cache"]], baseline=True)
    return DemoRun(workdir, files, records)


REAL_RUN = """\
# A real run (GPU, pretrained weights downloaded by open_clip / transformers):
expclip extract CAER-S/train --out caer_train.h5 --clip-model ViT-B-16
expclip extract RAF-DB/test --out rafdb.h5 --no-teacher --clip-model ViT-B-16 --dataset RAFDB
expclip extract DFEW/set_1_test.txt --strip-prefix /data/DFEW --root /my/DFEW --dataset DFEW --out dfew.h5 --no-teacher --clip-model ViT-B-16
expclip fit-head caer_train.h5 --out heads/b16
expclip evaluate --head heads/b16 --cache rafdb.h5 --cache dfew.h5 --baseline --json results.json"""
