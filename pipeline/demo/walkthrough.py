"""`expclip demo`: the whole pipeline offline in about half a minute, on synthetic faces and tiny encoders.

It draws faces, builds real-format checkpoints (open_clip `local-dir:`, BLIP-2
`save_pretrained`) pre-trained for seconds on other drawn faces (`pretrain`),
then runs the same stages a real run does: extract → fit-head → evaluate.
Because the encoders learnt the drawn expressions, the accuracies stand well
above chance and a broken stage (e.g. a permuted label map) shows; everything
is synthetic, so no number is a benchmark result.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from expclip.cache.checksums import OlderCache
from expclip.cache.reader import CacheReader
from expclip.demo import synthetic
from expclip.demo.pretrain import Schedule, drawn_faces, save_pretrained_clip, save_pretrained_teacher
from expclip.stages.encoders import clip as clip_encoder
from expclip.stages.evaluate import evaluate
from expclip.stages.extract import ExtractConfig, extract, sources
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.shared import protocol
from expclip.stages.shared.clip_identity import LOCAL_DIR
from expclip.stages.shared.heads import load_head

DEMO_CLASSES = protocol.class_order()[:7]
# The paper's SGD settings, and about as many steps as its CAER-S run (~450): 280 faces make 4 batches an epoch.
HEAD_EPOCHS = 100


@dataclass
class DemoRun:
    """Where the demo put everything, and the evaluation records."""

    workdir: Path
    files: dict[str, Path]
    records: list[dict]


def run_demo(workdir: Path, *, train_per_class: int = 40, eval_per_class: int = 12, clips: int = 21, seed: int = 0,
             schedule: Schedule = Schedule()) -> DemoRun:  # noqa: B008 (frozen: one shared default is safe)
    """Generate data and pre-trained tiny checkpoints under `workdir` (both kept for a re-run), then extract, fit
    and evaluate."""
    workdir = Path(workdir)
    files = {
        "clip": workdir / "models" / "tiny-clip-pretrained",
        "teacher": workdir / "models" / "tiny-blip2-t5-pretrained",
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
    if not (files["clip"].exists() and files["teacher"].exists()):
        faces = drawn_faces(DEMO_CLASSES, schedule.faces_per_class, seed=seed + 3)
        _build_once(files["clip"], lambda folder: save_pretrained_clip(folder, faces, schedule, seed=seed))
        _build_once(files["teacher"], lambda folder: save_pretrained_teacher(folder, faces, schedule, seed=seed))
    clip_model = LOCAL_DIR + str(files["clip"].resolve())

    discard_older_caches([files["train_cache"], files["eval_images_cache"], files["eval_clips_cache"]])
    common = dict(clip_model=clip_model, device="cpu", num_workers=0, batch_size=32)
    with clip_encoder.kept_loaded():  # the three caches share one CLIP, loaded once
        extract(sources.resolve(files["train_faces"], dataset="demo-train"), files["train_cache"],
                ExtractConfig(teacher=str(files["teacher"]), **common))
        extract(sources.resolve(files["eval_faces"], dataset="demo-images"), files["eval_images_cache"],
                ExtractConfig(teacher=None, **common))
        extract(
            sources.resolve(files["eval_clips"] / "annotations.txt", dataset="demo-clips"),
            files["eval_clips_cache"],
            ExtractConfig(teacher=None, **common),
        )

    # Keys named, not guessed: a workdir of an older demo (random encoders in other folders) holds their groups too.
    fit_head([files["train_cache"]], files["head"],
             FitConfig(batch_size=64, epochs=HEAD_EPOCHS, seed=seed, device="cpu"),
             clip_key=files["clip"].name, teacher_key=files["teacher"].name)
    records = evaluate(load_head(files["head"]), [files["eval_images_cache"], files["eval_clips_cache"]], baseline=True)
    return DemoRun(workdir, files, records)


def discard_older_caches(caches: list[Path]) -> None:
    """Remove the demo's own caches that an older expclip wrote in an older format, so that a re-run after an
    upgrade extracts them again (seconds) instead of stopping; any other problem with a cache is still an error."""
    for cache in caches:
        if cache.exists():
            try:
                CacheReader(cache).close()
            except OlderCache:
                cache.unlink()


def _build_once(folder: Path, build: Callable[[Path], object]) -> None:
    """Build a checkpoint beside `folder` and rename it into place when complete: a re-run reuses it (pre-training
    takes seconds), never an interrupted build."""
    if folder.exists():
        return
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(folder)


# Printed under the demo's tables by `expclip demo`: what its numbers are, and are not.
SYNTHETIC = (
    "All of the above is synthetic: drawn faces, and tiny encoders pre-trained for seconds on other drawn faces.\n"
    "The accuracies (chance: 1 in 7) show that every stage works end to end; none is a benchmark result, and Δ\n"
    "is no measure of Exp-CLIP's gain: the tiny teacher learnt the drawings' facial actions in seconds, not language."
)

REAL_RUN = """\
# A real run (GPU, pretrained weights downloaded by open_clip / transformers):
expclip extract CAER-S/train --out caer_train.h5 --clip-model ViT-B-16
expclip extract RAF-DB/test --out rafdb.h5 --no-teacher --clip-model ViT-B-16 --dataset RAFDB
expclip extract DFEW/set_1_test.txt --strip-prefix /data/DFEW --root /my/DFEW --dataset DFEW --out dfew.h5 \
--no-teacher --clip-model ViT-B-16
expclip fit-head caer_train.h5 --out heads/b16
expclip evaluate --head heads/b16 --cache rafdb.h5 --cache dfew.h5 --baseline --json results.json"""
