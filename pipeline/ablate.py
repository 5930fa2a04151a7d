"""`expclip ablate`: fit-head + evaluate over a Cartesian grid, every run kept and reused.

A run is keyed by its full configuration plus the fingerprints of the caches it
read, so re-running a grid (or a larger grid that contains it) only trains what
is new, and a changed cache never reuses a stale result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
import typing
from dataclasses import asdict
from pathlib import Path

from expclip.cache.reader import CacheReader
from expclip.base.errors import ExpclipError
from expclip.report import write_json
from expclip.stages.evaluate import evaluate
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.shared.heads import load_head
from expclip.stages.shared.progress import progress
from expclip.stages.shared.vocabulary import ENSEMBLE

# Grid names: FitConfig's scalar fields, plus which cache groups to train on; values convert by the field's type.
_FIT_TYPES = {name: kind for name, kind in typing.get_type_hints(FitConfig).items()
              if name not in ("milestones", "init_from", "device")}
SELECTORS = ("instruction", "teacher_key", "clip_key")
GRID_NAMES = tuple(_FIT_TYPES) + SELECTORS


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
    raise ExpclipError(f"--grid: {name}={text!r} is not {' or '.join(m.__name__ for m in members if m is not type(None))}")


def parse_grid(text: str) -> dict[str, list]:
    """"lr=1e-3,1e-2 epochs=5,10" -> {"lr": [0.001, 0.01], "epochs": [5, 10]}."""
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
    if not grid:
        raise ExpclipError("--grid: empty; e.g. --grid 'lr=1e-3,1e-2 epochs=5,10'")
    return grid


def _fingerprint(path: Path) -> str:
    """Fingerprint of everything a cache holds (items plus every feature group)."""
    with CacheReader(path) as r:
        return r.fingerprint(r.group_paths())


def run_grid(
    train: list[Path],
    evals: list[Path],
    grid: dict[str, list],
    out_dir: Path,
    *,
    base: FitConfig | None = None,
    prompt_sets: list[str] | None = None,
    ensemble: str = ENSEMBLE,
    select: dict[str, str | None] | None = None,
    label_map: dict[str, str] | None = None,
) -> list[dict]:
    """Run every grid point not already in `out_dir/runs/`; return all runs of the grid in order.

    `select` gives clip_key / teacher_key / instruction for every point; grid values override it.
    """
    base = base or FitConfig()
    out_dir = Path(out_dir)
    caches = {"train": [_fingerprint(p) for p in train], "eval": [_fingerprint(p) for p in evals]}
    names = list(grid)
    runs = []
    with progress("configs") as bar:
        points = list(itertools.product(*grid.values()))
        task = bar.add_task("ablate", total=len(points))
        for values in points:
            point = dict(zip(names, values))
            fit = dataclasses.replace(base, **{k: v for k, v in point.items() if k in _FIT_TYPES})
            chosen = {k: point.get(k, (select or {}).get(k)) for k in SELECTORS}
            identity = {"fit": asdict(fit), "select": chosen, "caches": caches,
                        "prompt_sets": prompt_sets, "ensemble": ensemble, "label_map": label_map}
            key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
            result = out_dir / "runs" / f"{key}.json"
            if result.exists():
                run = json.loads(result.read_text("utf-8"))
                run["reused"] = True
            else:
                head_path = out_dir / "heads" / key
                meta = fit_head(train, head_path, fit, **chosen)
                records = evaluate(load_head(head_path), evals, prompt_sets=prompt_sets, ensemble=ensemble,
                                   label_map=label_map)
                run = {"key": key, "grid": point, "identity": identity, "head": str(head_path),
                       "final_loss": meta["history"][-1]["loss"] if meta.get("history") else None,
                       "records": records}
                result.parent.mkdir(parents=True, exist_ok=True)
                write_json(run, result)
                run["reused"] = False
            runs.append(run)
            bar.advance(task)
    return runs


def rows(runs: list[dict]) -> list[dict]:
    """Flat rows (grid values + dataset, prompt set, UAR, WAR) for tables and CSV."""
    return [
        {**run["grid"], "run": run["key"], "dataset": r["dataset"], "prompt_set": r["prompt_set"],
         "uar": r["uar"], "war": r["war"], "n": r["n"], "reused": run["reused"]}
        for run in runs
        for r in run["records"]
    ]
