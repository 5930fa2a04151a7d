"""`expclip run PRESET`: the paper's runs as one command — check the data, extract, fit-head, evaluate, compare.

The data root is surveyed first (every source listed, every clip folder
looked for) and anything missing is one error listing each dataset with the
path where it is expected, before any encoding. Every step then reuses what is
done: extract's plan recognises a complete cache without loading a model, and
the head is re-fitted only when its HEAD.json differs from this run in
configuration, encoder keys or training-cache fingerprint; evaluation (seconds)
always runs. OUT holds `caches/` (shared by the presets: one training cache
keeps a single teacher group for all three CLIP models), `heads/PRESET` and
`results/PRESET.json` (provenance, every record, fold means, Table 2 beside the paper).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from expclip.base.errors import ExpclipError
from expclip.base.settings import as_json
from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.atomic import ensure_folder
from expclip.cache.reader import CacheReader, whole_fingerprint
from expclip.output_paths import writable
from expclip.presets import Dataset, Preset, paper_numbers
from expclip.reports.files import write_json
from expclip.stages.encoders import clip as clip_encoder
from expclip.stages.evaluate import evaluate, fold_means, table2, unscored_classes
from expclip.stages.extract import counts, extract, sources
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.plan import clip_identity_for, teacher_identity_for
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.shared import protocol
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.heads import head_files, load_head
from expclip.stages.shared.labels import read_label_map
from expclip.stages.shared.precision import resolve_precision
from expclip.stages.shared.vocabulary import AUTO

Say = Callable[[str], None]
WRITES = ("caches/*", "caches/*.partial/**/*", "heads/*", "results/*")  # in OUT (expclip.output_paths: never an input)
Config = TypeVar("Config", ExtractConfig, FitConfig)


@dataclass
class Planned:
    """One source of a preset under the data root, listed (or why it cannot be)."""

    dataset: Dataset
    fold: int | None
    path: Path
    training: bool
    source: sources.Source | None = None
    problem: str | None = None

    @property
    def label(self) -> str:
        fold = f" fold {self.fold}" if self.fold else ""
        return self.dataset.name + fold + (" (training)" if self.training else "")

    @property
    def cache_name(self) -> str:
        return self.dataset.name + (f"-fold{self.fold}" if self.fold else "") + ".h5"


def survey(preset: Preset, data_root: Path) -> list[Planned]:
    """Every source of the preset (training first), listed from the data root; `problem` says what is missing."""
    found = []
    for dataset, training in [(preset.training, True), *((d, False) for d in preset.evaluation)]:
        for fold, relative in dataset.sources():
            planned = Planned(dataset, fold, Path(data_root) / relative, training)
            _look(planned, Path(data_root), preset.frames)
            found.append(planned)
    return found


def _look(planned: Planned, data_root: Path, frames: int) -> None:
    d, path = planned.dataset, planned.path
    if not path.exists():
        planned.problem = f"missing {'folder' if d.kind == 'folder' else 'file'} {path}"
        return
    try:
        planned.source = sources.resolve(path, kind=d.kind, root=data_root / d.root if d.root else None,
                                         strip_prefix=d.strip_prefix, frames=frames, dataset=d.name)
    except ExpclipError as e:
        planned.problem = str(e)
        return
    absent = [p for p in planned.source.paths if not p.exists()]
    if absent:
        what = "clip folders" if d.kind == "clips" else "files"
        planned.problem = (f"{len(absent)} of {len(planned.source.paths)} {what} listed in {path} are missing, "
                           f"e.g. {absent[0]}")


def require_complete(planned: list[Planned], data_root: Path) -> None:
    """One error listing every missing or unreadable dataset (sources sharing a path and a problem on one line)."""
    grouped: dict[str, list[Planned]] = {}
    for p in planned:
        if p.problem:
            grouped.setdefault(p.problem, []).append(p)
    if grouped:
        lines = [f"{', '.join(p.label for p in group)}: {problem} — expected: {group[0].dataset.layout}"
                 for problem, group in grouped.items()]
        raise ExpclipError(f"--data-root {data_root}: {sum(map(len, grouped.values()))} of {len(planned)} sources are "
                           "missing or incomplete; nothing was encoded:\n  " + "\n  ".join(lines))


def run_preset(preset: Preset, data_root: Path, out: Path, *, extract_overrides: dict | None = None,
               fit_overrides: dict | None = None, device: str = AUTO, say: Say = lambda line: None) -> dict:
    """Survey the data root, then extract → fit-head → evaluate what is not done; write and return the results.

    `extract_overrides` / `fit_overrides` replace preset fields (ExtractConfig / FitConfig names), e.g. a
    local CLIP for tests; a new `clip_model` drops the preset's pretrained tag unless one is given too.
    `device` runs all three stages. `say` hears one line per finished step.
    """
    started = time.perf_counter()
    data_root, out = Path(data_root), Path(out)
    if not data_root.is_dir():
        raise ExpclipError(f"--data-root {data_root}: no such folder")
    xcfg = _extract_config(preset, extract_overrides or {}, device)
    fcfg = _replace(preset.fit, {**(fit_overrides or {}), "device": device}, "fit")
    planned = survey(preset, data_root)
    require_complete(planned, data_root)
    writable(out, "--out", folder=True, inputs={"--data-root": [p.path for p in planned]},  # after every check of
             writes=WRITES)  # the arguments and the data: a mistake leaves nothing
    with clip_encoder.kept_loaded():  # one CLIP for all the caches, loaded once
        steps = [_extract(p, out / "caches" / p.cache_name, xcfg, say) for p in planned]
    fitted = _fit(out / "caches" / planned[0].cache_name, out / "heads" / preset.name, fcfg, xcfg, say)
    records = _evaluate(preset, planned[1:], out / "caches", Path(fitted["head"]), device)
    means = fold_means(records)
    result = {
        "preset": preset.name, "expclip_version": __version__, "data_root": str(data_root), "out": str(out),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overrides": {"extract": extract_overrides or {}, "fit": fit_overrides or {}, "device": device},
        "preset_data": preset.data, "extract_config": as_json(xcfg),
        "paper_column": preset.extract.clip_model,
        "table_prompt_set": preset.report["prompt_set"], "extract": steps, "fit_head": fitted,
        "table2": table2(means, paper_numbers(preset), preset.report["prompt_set"]),
        "fold_means": means, "records": records,
        "seconds": round(time.perf_counter() - started, 3),
    }
    path = out / "results" / f"{preset.name}.json"
    ensure_folder(path.parent)
    write_json(result, path)
    result["results"] = str(path)
    return result


def _replace(config: Config, overrides: dict, section: str) -> Config:
    """`config` with `overrides`, refusing names the config does not have and values outside its choices."""
    valid = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ExpclipError(f"{section} override(s) {', '.join(unknown)}: not settings; valid: {', '.join(valid)}")
    changed = dataclasses.replace(config, **overrides)
    changed.check()
    return changed


def _extract_config(preset: Preset, overrides: dict, device: str) -> ExtractConfig:
    if "clip_model" in overrides:  # the preset's pretrained tag belongs to the preset's model
        overrides = {"clip_pretrained": None, **overrides}
    return _replace(preset.extract, {**overrides, "device": device}, "extract")


def _extract(planned: Planned, cache: Path, cfg: ExtractConfig, say: Say) -> dict:
    """Extract one source (the training set with the teacher, evaluation sets without); extract skips what is done."""
    source, left_out = _protocol_classes(planned)
    summary = extract(source, cache, cfg if planned.training else dataclasses.replace(cfg, teacher=None))
    done_before = summary["encoded_rows"] == 0 and not summary["loaded"] and not summary["merged"]
    step = {"dataset": planned.dataset.name, "fold": planned.fold, "source": str(planned.path), "cache": str(cache),
            "rows": summary["rows"], "encoded": summary["encoded_rows"], "failed": len(summary["failures"]),
            "complete_before": done_before, "left_out": left_out,
            "seconds": round(sum(summary["seconds"].values()), 3), "fingerprint": whole_fingerprint(cache)}
    if done_before:
        say(f"{planned.label}: {cache} already complete, nothing to encode")
    else:
        say(f"{planned.label}: {cache} ({counts(summary)})")
    return step


def _protocol_classes(planned: Planned) -> tuple[sources.Source, dict]:
    """The source without the items of classes its benchmark does not score (the protocol rule evaluation
    keeps); returns it and what was left out."""
    src, d = planned.source, planned.dataset
    if planned.training or src.items.kind == "clips":  # clip lists' labels are checked against the protocol already
        return src, {}
    names = read_label_map(d.label_map) if d.label_map else {}
    dropped = unscored_classes(src.items.class_names, d.name, names)
    if not dropped:
        return src, {}
    rows = ~np.isin(src.items.labels, dropped)
    dropped_names = [src.items.class_names[i] for i in dropped]
    kept = [i for i in range(len(src.items.class_names)) if i not in dropped]
    renumber = np.full(len(src.items.class_names) + 1, -1)
    renumber[kept] = np.arange(len(kept))
    items = fmt.Items(ids=[i for i, r in zip(src.items.ids, rows) if r], labels=renumber[src.items.labels[rows]],
                      class_names=[src.items.class_names[i] for i in kept])
    return (dataclasses.replace(src, items=items, paths=[p for p, r in zip(src.paths, rows) if r]),
            {"classes": [protocol.canonical_class(names.get(n, n)) for n in dropped_names],
             "items": int((~rows).sum())})


def _keys(cfg: ExtractConfig) -> tuple[str, str, str]:
    """(CLIP key, teacher key, instruction key) of the training groups: a shared cache may hold other groups too."""
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    clip_key, _ = clip_identity_for(cfg, precision)
    teacher_key, instruction_key, _ = teacher_identity_for(cfg, precision)
    return clip_key, teacher_key, instruction_key


def _fit(train: Path, head: Path, cfg: FitConfig, xcfg: ExtractConfig, say: Say) -> dict:
    """Train the head unless HEAD.json shows this configuration on these very groups already."""
    keys = _keys(xcfg)
    meta = _current_head(head, cfg, train, keys)
    reused = meta is not None
    if meta is None:
        meta = fit_head([train], head, cfg, clip_key=keys[0], teacher_key=keys[1], instruction=keys[2])
    step = {"head": str(head), "reused": reused, "n_train": meta["n_train"], "final_loss": meta["history"][-1]["loss"],
            "wall_seconds": meta["wall_seconds"], "clip_key": keys[0], "teacher_key": keys[1],
            "instruction_key": keys[2], "training_caches": meta["caches"]}
    say(f"fit-head: {'reused' if reused else 'trained'} {head} "
        f"({step['n_train']} pairs, final loss {step['final_loss']:.4f})")
    return step


def _current_head(head: Path, cfg: FitConfig, train: Path, keys: tuple[str, str, str]) -> dict | None:
    """HEAD.json when the head was fitted with `cfg` on the training cache's groups `keys` as they are now."""
    weights, card = head_files(head)
    if not (weights.exists() and card.exists()):
        return None
    try:
        meta = load_head(head).meta  # checked as any head is loaded
    except ExpclipError:
        return None  # damaged, or written before heads were checked: fit again
    recorded = (meta.get("clip_key"), meta.get("teacher_key"), meta.get("instruction_key"))
    if meta.get("config") != as_json(cfg) or recorded != keys:
        return None
    with CacheReader(train) as reader:
        fingerprint = reader.fingerprint([fmt.image_path(keys[0]), fmt.teacher_path(keys[1], keys[2])])
    return meta if [c.get("fingerprint") for c in meta.get("caches", [])] == [fingerprint] else None


def _evaluate(preset: Preset, planned: list[Planned], caches: Path, head_path: Path, device: str) -> list[dict]:
    """Exp-CLIP and plain CLIP on every evaluation cache, each dataset with its label map; records carry the fold."""
    head = load_head(head_path)
    records = []
    for dataset in preset.evaluation:
        folds = {str(caches / p.cache_name): p.fold for p in planned if p.dataset is dataset}
        found = evaluate(head, [Path(c) for c in folds], prompt_sets=list(preset.prompt_sets), baseline=True,
                         label_map=read_label_map(dataset.label_map) if dataset.label_map else None, device=device)
        records += [{**r, "fold": folds[r["cache"]]} for r in found]
    return records
