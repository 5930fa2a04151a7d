"""How far above chance `expclip demo` lands, over seeds, and how far a permuted label map drops it.

Each seed is a whole demo (new drawn faces, new pre-training, new head) in its
own folder. Per seed: the least UAR / WAR over all its records (2 datasets x
CLIP / Exp-CLIP x 5 prompt sets), per dataset and method; then the same caches
evaluated with a label map that shifts every class to the next one: the
greatest and the mean of those scores, and the least drop from the right map.
The last row is the worst over seeds: tests/test_demo.py's margin must sit
inside it. Chance is 100/7 = 14.29 %. One option per field of the pre-training
schedule (expclip.demo.pretrain.Schedule: --clip-steps, --lr, ...) tries another.
Run: python benchmarks/demo_seeds.py [--seeds 16] [--first 0] [--clip-steps N] [--teacher-steps N] [--lr X] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from statistics import mean

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import describe  # noqa: E402  benchmarks/, beside this script
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from expclip.demo.pretrain import Schedule  # noqa: E402
from expclip.demo.walkthrough import DEMO_CLASSES, run_demo  # noqa: E402
from expclip.stages.evaluate import evaluate  # noqa: E402
from expclip.stages.shared.heads import load_head  # noqa: E402

GROUPS = {("demo-images", "clip"): "images CLIP", ("demo-images", "exp-clip"): "images Exp-CLIP",
          ("demo-clips", "clip"): "clips CLIP", ("demo-clips", "exp-clip"): "clips Exp-CLIP"}


def one_seed(workdir: Path, seed: int, schedule: Schedule) -> dict:
    """The demo at `seed`, and its records under the right and the shifted label map."""
    start, cpu = time.perf_counter(), time.process_time()
    run = run_demo(workdir, seed=seed, schedule=schedule)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    shifted = {name: DEMO_CLASSES[(i + 1) % len(DEMO_CLASSES)] for i, name in enumerate(DEMO_CLASSES)}
    caches = [run.files["eval_images_cache"], run.files["eval_clips_cache"]]
    permuted = evaluate(load_head(run.files["head"]), caches, baseline=True, label_map=shifted)
    right = {(r["dataset"], r["method"], r["prompt_set"]): r for r in run.records}
    row = {"seed": seed, "seconds": seconds, "cpu": cpu}
    for group in GROUPS:
        mine = [r for r in run.records if (r["dataset"], r["method"]) == group]
        row[group] = min(min(r["uar"], r["war"]) for r in mine)
    row["permuted max"] = max(max(r["uar"], r["war"]) for r in permuted)
    row["permuted mean"] = mean(r[k] for r in permuted for k in ("uar", "war"))
    row["least drop"] = min(
        min(right[r["dataset"], r["method"], r["prompt_set"]][k] - r[k] for k in ("uar", "war")) for r in permuted
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first", type=int, default=0)
    for field in dataclasses.fields(Schedule):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    parser.add_argument("--workdir", type=Path, default=None, help="keep each seed's demo here (default: temporary)")
    args = parser.parse_args()
    schedule = Schedule(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Schedule)})
    console = Console(width=140)
    columns = ["seed", "s", "cpu s", *(f"{name} min" for name in GROUPS.values()),
               "permuted max", "permuted mean", "least drop"]
    table = Table(*columns, title=f"expclip demo over seeds: least of UAR and WAR over 5 prompt sets (%); {schedule}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        for seed in range(args.first, args.first + args.seeds):
            row = one_seed(root / f"seed-{seed}", seed, schedule)
            rows.append(row)
            table.add_row(str(seed), f"{row['seconds']:.1f}", f"{row['cpu']:.1f}", *(f"{row[g]:.1f}" for g in GROUPS),
                          *(f"{row[k]:.1f}" for k in ("permuted max", "permuted mean", "least drop")))
            console.print(f"seed {seed}: {row['seconds']:.1f} s ({row['cpu']:.1f} s CPU)", style="dim")
    worst = [f"{min(r[g] for r in rows):.1f}" for g in GROUPS]
    worst += [f"{max(r[k] for r in rows):.1f}" for k in ("permuted max", "permuted mean")]
    table.add_row(
        "worst",
        f"{max(r['seconds'] for r in rows):.1f}",
        f"{max(r['cpu'] for r in rows):.1f}",
        *worst,
        f"{min(r['least drop'] for r in rows):.1f}",
        style="bold",
    )
    console.print(describe())
    console.print(table)


if __name__ == "__main__":
    main()
