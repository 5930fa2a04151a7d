"""`expclip ablate`: fit-head + evaluate over a Cartesian grid, every run kept and reused.

A run is keyed by its full configuration plus the fingerprints of the caches it
read, so re-running a grid (or a larger grid that contains it) only trains what
is new, and a changed cache never reuses a stale result. Runs that share the
data order (e.g. an lr x weight-decay grid) train together, K heads in one pass
over the data (fit_head.train.fit_heads); each equals the head trained alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
import typing
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.base.settings import as_json
from expclip.cache.reader import whole_fingerprint
from expclip.reports.files import write_json
from expclip.stages.evaluate import EvaluateConfig, evaluate
from expclip.stages.fit_head import FitConfig
from expclip.stages.fit_head.config import value_problem
from expclip.stages.fit_head.train import fit_heads, shared_order
from expclip.stages.shared.heads import load_head
from expclip.stages.shared.labels import read_label_map
from expclip.stages.shared.progress import progress

# Grid names: FitConfig's scalar fields, plus which cache groups to train on; values convert by the field's type.
_FIT_TYPES = {name: kind for name, kind in typing.get_type_hints(FitConfig).items()
              if name not in ("milestones", "init_from", "device")}
SELECTORS = ("instruction", "teacher_key", "clip_key")
GRID_NAMES = tuple(_FIT_TYPES) + SELECTORS
# What a grid writes in its OUT_DIR (expclip.output_paths: none of them may be an input).
WRITES = ("ablation.json", "ablation.csv", "runs/*.json", "heads/*.safetensors", "heads/*.json")
MAX_TOGETHER = 32  # heads trained in one pass (each holds weights, momentum and gradient: ~38 MB at 768 x 4096)


def _convert(name: str, text: str):
    """`text` as the first member of the field's type that takes it (`float | str` tries float, then str)."""
    kind = _FIT_TYPES.get(name, str)
    members = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for member in members:
        if member is not type(None):
            try:
                return member(text)
            except ValueError:
                continue
    raise ExpclipError(
        f"--grid: {name}={text!r} is not {' or '.join(m.__name__ for m in members if m is not type(None))}"
    )


def parse_grid(text: str) -> dict[str, list]:
    """ "lr=1e-3,1e-2 epochs=5,10" -> {"lr": [0.001, 0.01], "epochs": [5, 10]}."""
    grid: dict[str, list] = {}
    for token in text.split():
        name, sep, values = token.partition("=")
        name = name.replace("-", "_")
        if not sep or not values:
            raise ExpclipError(f"--grid: {token!r} is not NAME=V1,V2,...")
        if name not in GRID_NAMES:
            raise ExpclipError(f"--grid: unknown name {name!r}; choose from {', '.join(GRID_NAMES)}")
        if name in grid:
            raise ExpclipError(f"--grid: {name!r} given twice")
        grid[name] = [_convert(name, v) for v in values.split(",") if v]
        for value in grid[name] if name in _FIT_TYPES else ():
            problem = value_problem(name, value)  # fit-head's own rule, before any work
            if problem:
                raise ExpclipError(f"--grid: {name}: {problem}")
    if not grid:
        raise ExpclipError("--grid: empty; e.g. --grid 'lr=1e-3,1e-2 epochs=5,10'")
    return grid


def run_grid(
    train: list[Path],
    evals: list[Path],
    grid: dict[str, list],
    out_dir: Path,
    *,
    base: FitConfig | None = None,
    evaluation: EvaluateConfig | None = None,
    select: dict[str, str | None] | None = None,
) -> list[dict]:
    """Run every grid point not already in `out_dir/runs/`; return all runs of the grid in order.

    `select` gives clip_key / teacher_key / instruction for every point; grid values override it.
    `evaluation` scores each head (its device is the point's; the head's provenance picks the CLIP key).
    """
    base, evaluation = base or FitConfig(), evaluation or EvaluateConfig()
    evaluation.check()
    names = read_label_map(evaluation.label_map) if evaluation.label_map else None
    # Every evaluation setting that changes a record keys the run (the device and the key do not).
    scoring = {k: v for k, v in as_json(evaluation).items() if k not in ("baseline", "clip_key", "device")}
    out_dir = Path(out_dir)
    caches = {"train": [whole_fingerprint(p) for p in train], "eval": [whole_fingerprint(p) for p in evals]}
    planned = []  # (key, point, fit config, selectors, identity), in grid order
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        fit = dataclasses.replace(base, **{k: v for k, v in point.items() if k in _FIT_TYPES})
        fit.check()  # every point before the first trains: a bad one never stops a grid half-way
        chosen = {k: point.get(k, (select or {}).get(k)) for k in SELECTORS}
        identity = {
            "fit": as_json(fit),
            "select": chosen,
            "caches": caches,
            **scoring,
            "prompt_sets": evaluation.sets(),
            "label_map": names,
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        planned.append((key, point, fit, chosen, identity))
    done: dict[str, dict] = {}
    for key, *_ in planned:
        result = out_dir / "runs" / f"{key}.json"
        if result.exists():
            done[key] = {**json.loads(result.read_text("utf-8")), "reused": True}
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    with progress("configs") as bar:
        task = bar.add_task("ablate", total=len(planned), completed=len(done))
        for group in _together([p for p in planned if p[0] not in done]):
            heads = [out_dir / "heads" / key for key, *_ in group]
            metas = fit_heads(train, heads, [fit for _, _, fit, _, _ in group], **group[0][3])
            for (key, point, fit, _, identity), head_path, meta in zip(group, heads, metas, strict=True):
                records = evaluate(load_head(head_path), evals, evaluation, baseline=False, label_map=names,
                                   clip_key=None, device=fit.device)
                run = {
                    "key": key,
                    "grid": point,
                    "identity": identity,
                    "head": str(head_path),
                    "final_loss": meta["history"][-1]["loss"] if meta.get("history") else None,
                    "trained_together": len(group),
                    "records": records,
                }
                write_json(run, out_dir / "runs" / f"{key}.json")
                done[key] = {**run, "reused": False}
                bar.advance(task)
    return [done[key] for key, *_ in planned]


def _together(todo: list[tuple]) -> list[list[tuple]]:
    """Runs that share the data order (and selectors) as groups of at most MAX_TOGETHER, in grid order;
    a configuration the hand-written gradient does not cover is a group of one."""
    groups: dict[tuple, list[tuple]] = {}
    for i, run in enumerate(todo):
        order = shared_order(run[2])
        groups.setdefault((i,) if order is None else (order, json.dumps(run[3], sort_keys=True)), []).append(run)
    return [g[s : s + MAX_TOGETHER] for g in groups.values() for s in range(0, len(g), MAX_TOGETHER)]


def rows(runs: list[dict]) -> list[dict]:
    """Flat rows (grid values + dataset, prompt set, UAR, WAR) for tables and CSV."""
    return [
        {
            **run["grid"],
            "run": run["key"],
            "dataset": r["dataset"],
            "prompt_set": r["prompt_set"],
            "uar": r["uar"],
            "war": r["war"],
            "n": r["n"],
            "reused": run["reused"],
        }
        for run in runs
        for r in run["records"]
    ]
