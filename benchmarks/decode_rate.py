"""Stage one's CPU data path alone: the faces/s extract's DataLoader decodes and transforms, per core and with
its workers, so a GPU run can say when decoding limits (issue 20: when would decoding JPEGs on the GPU pay?).

It times `encode.face_loader`, the DataLoader `extract` itself builds (FaceDataset: `images.load_image`
decodes each JPEG, then each encoder's CPU-side transform; collate; pinned memory where there is a GPU), on the
JPEG faces stage_one.py writes, for both stage-one configurations, without running the encoders: CLIP ViT-L-14
alone (its transform gives uint8 pixels; scaling and normalising wait for the device, transforms.OnDevice) and
CLIP + the BLIP-2 teacher (whose image processor adds a float32 tensor per face). CLIP is stage_one's random
ViT-L-14, built on the GPU where there is one (so the loader pins memory, as extract's does). The teacher's
transform is its image processor alone, and stage_one's random Flan-T5-XXL folder carries the demo's processor
(224 px): the tiny teacher built on that processor has the very same transform, without 12 B parameters.
--tiny takes the demo's tiny CLIP too (the same 224 px transform, faster to build; a smoke run).

Rows: 0 workers = the DataLoader in this process with torch at one thread, as in a worker: one core's rate,
on one worker's share of the faces; then each N of --workers (default: extract's, `default_workers()`) on all
the faces. Each is timed after a warm-up of one batch per process (the workers started, their first faces
decoded). When a configuration's encoders take faces faster than its best row with workers, decoding limits
stage one (decoding in the process that runs the encoders would take turns with them, so that row only says what
one core does).

Run: python benchmarks/decode_rate.py [--faces 8192] [--workers N [N ...]] [--batch-size 256] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from machine import describe  # noqa: E402  benchmarks/, beside this script
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from stage_one import (  # noqa: E402
    CLIP_TAG,
    IMAGE_SIZE,
    TARGET_BOTH,
    TARGET_CLIP,
    random_clip,
    random_teacher,
    teacher_folder,
    write_faces,
)

from expclip.demo.checkpoints import save_tiny_clip  # noqa: E402
from expclip.stages.encoders.base import ImageEncoder  # noqa: E402
from expclip.stages.extract import ExtractConfig, sources  # noqa: E402
from expclip.stages.extract.config import default_workers  # noqa: E402
from expclip.stages.extract.encode import face_loader  # noqa: E402
from expclip.stages.shared.interrupts import StopRequest  # noqa: E402
from expclip.stages.shared.precision import resolve_precision  # noqa: E402
from expclip.stages.shared.vocabulary import BATCH_SIZES  # noqa: E402

CLIP_ALONE, BOTH = "CLIP alone (--no-teacher)", "CLIP + teacher"  # stage_one's rows
TARGETS = {CLIP_ALONE: TARGET_CLIP, BOTH: TARGET_BOTH}


@dataclass
class Rate:
    """One configuration's data path with one number of workers (0: in this process)."""

    config: str
    workers: int
    faces: int  # timed, after the warm-up
    seconds: float

    @property
    def rate(self) -> float:
        return self.faces / self.seconds

    @property
    def per_worker(self) -> float:
        """Faces/s per decoding process: the in-process row is one."""
        return self.rate / max(self.workers, 1)


def timed(source: sources.Source, encoders: dict[str, ImageEncoder], cfg: ExtractConfig,
          faces: int) -> tuple[int, float]:
    """The first `faces` items through extract's loader: faces and seconds from the arrival of the warm-up's last
    batch (one per process) to that of the last batch."""
    loader, _, _ = face_loader(source, encoders, [(0, faces)], cfg, StopRequest())
    warm = max(cfg.num_workers, 1)
    counted, started = 0, 0.0
    for k, (index, _, reasons) in enumerate(loader):
        if any(reasons):
            raise RuntimeError(f"a face was not decoded: {next(r for r in reasons if r)}")
        ended = time.perf_counter()
        if k == warm - 1:
            started = ended
        elif k >= warm:
            counted += len(index)
    return counted, ended - started


def one_core(source: sources.Source, encoders: dict[str, ImageEncoder], cfg: ExtractConfig,
             faces: int) -> tuple[int, float]:
    """`timed` without workers, torch at one thread as DataLoader workers run it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return timed(source, encoders, cfg, faces)
    finally:
        torch.set_num_threads(threads)


def measure(args: argparse.Namespace, root: Path, device: torch.device, log: Console) -> list[Rate]:
    """Both configurations: in this process on one worker's share of the faces, then with each --workers."""
    log.print(f"writing {args.faces:,} JPEG faces ({os.cpu_count()} processes) …")
    source = write_faces(root / "faces", args.faces, os.cpu_count() or 1, seed=1)
    precision = resolve_precision("auto", device)
    clip_name = save_tiny_clip(root / "tiny-clip", image_size=IMAGE_SIZE) if args.tiny else "ViT-L-14"
    log.print(f"building CLIP and the teacher's processor on {device} for their transforms …")
    clip = random_clip(clip_name, device, precision, None if args.tiny else CLIP_TAG)
    teacher = random_teacher(teacher_folder(root, real=False), device, precision)
    share = max(2 * args.batch_size, args.faces // max(args.workers))
    rows = []
    for config, encoders in ((CLIP_ALONE, {"clip": clip}), (BOTH, {"clip": clip, "teacher": teacher})):
        for workers in (0, *args.workers):
            cfg = ExtractConfig(batch_size=args.batch_size, num_workers=workers, device=device.type)
            row = Rate(config, workers, *(one_core(source, encoders, cfg, share) if workers == 0
                                          else timed(source, encoders, cfg, args.faces)))
            log.print(f"{config}, workers {workers}: {row.rate:,.0f} faces/s")
            rows.append(row)
    return rows


def table(rows: list[Rate]) -> Table:
    out = Table(title="extract's data path (stage one without its encoders)")
    for column in ("configuration", "workers", "faces timed", "faces/s", "faces/s per worker"):
        out.add_column(column, justify="left" if column == "configuration" else "right")
    for r in rows:
        out.add_row(r.config, str(r.workers), f"{r.faces:,}", f"{r.rate:,.0f}", f"{r.per_worker:,.0f}")
    return out


def verdict(rows: list[Rate], config: str, real: bool) -> str:
    """The configuration's fastest row with workers as the rate above which decoding limits; against issue 20's
    target when the real architectures' transforms ran."""
    best = max((r for r in rows if r.config == config and r.workers), key=lambda r: r.rate)
    line = (f"{config}: decoding limits stage one above {best.rate:,.0f} faces/s on this machine "
            f"({best.workers} worker{'s' if best.workers > 1 else ''})")
    if real:
        target = TARGETS[config]
        line += (f"; issue 20's target {target:,} faces/s is "
                 + ("within it" if best.rate >= target else "beyond it: decoding would limit first"))
    return line


def main(argv: list[str] | None = None) -> list[Rate]:
    """Measure, print the machine, the table and one verdict per configuration; returns the rows (the smoke test
    reads them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, help="JPEG faces decoded with workers (default 8,192; tiny: 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[default_workers()],
                        help="DataLoader worker counts to time, besides this process alone (default: extract's)")
    parser.add_argument("--batch-size", type=int,
                        help=f"items per batch (default: extract's on a GPU, {BATCH_SIZES['cuda']}; tiny: 16)")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny CLIP: a smoke run")
    args = parser.parse_args(argv)
    args.faces = args.faces or (64 if args.tiny else 8192)
    args.batch_size = args.batch_size or (16 if args.tiny else BATCH_SIZES["cuda"])
    if min(args.workers) < 1:
        parser.error("--workers: at least 1 each (this process alone is always timed)")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: at least 1")
    if args.faces < (max(args.workers) + 1) * args.batch_size:
        parser.error(f"--faces: at least (most workers + 1) × batch = {(max(args.workers) + 1) * args.batch_size}, "
                     "so that a batch is timed after each worker's warm-up one")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    console, log = Console(width=200), Console(stderr=True)
    console.print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp), device, log)
    models = ("CLIP = the demo's tiny CLIP (smoke run)" if args.tiny
              else f"CLIP = open_clip ViT-L-14 ({CLIP_TAG} architecture)")
    console.print(f"{models}, teacher = BLIP-2's image processor (224 px); {args.faces:,} JPEG faces of {IMAGE_SIZE} "
                  f"px (stage_one's), batch {args.batch_size}, pinned memory: {device.type == 'cuda'}; workers 0 = "
                  "this process, torch at one thread (one core's rate); no encoder ran")
    console.print(table(rows))
    for config in (CLIP_ALONE, BOTH):
        console.print(verdict(rows, config, not args.tiny))
    return rows


if __name__ == "__main__":
    main()
