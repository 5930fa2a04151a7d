"""Zero-shot evaluation of a head (Exp-CLIP) and of plain CLIP on evaluation caches.

Scores follow the paper, by the rule search and predict share
(`stages.shared.scoring`): an image's score for a prompt is the cosine between
the head-mapped image and the head-mapped prompt, and a class's score is the
mean of its prompts' scores (`ensemble="logits"`); `ensemble="embedding"`
instead takes the cosine with the renormalised mean of the class's normalised
mapped prompts (CLIP style). A clip's image is the mean over its frames of the
mapped frame features, normalised; plain CLIP (`baseline`) averages the
normalised frame features. The logit scale multiplies every score equally (and
a SigLIP's logit bias adds to each equally): neither changes an argmax, so both
are left out. WAR is accuracy and UAR the mean recall
over the dataset's classes present in the ground truth, both in percent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

from expclip.base.errors import ExpclipError
from expclip.cache.reader import CacheReader
from expclip.stages.evaluate.config import EvaluateConfig
from expclip.stages.evaluate.protocol_rules import scored_classes
from expclip.stages.shared import protocol
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.heads import Head
from expclip.stages.shared.labels import Labels, dataset_labels, read_label_map
from expclip.stages.shared.progress import progress
from expclip.stages.shared.scoring import Space, blocks, class_targets, head_space
from expclip.stages.shared.select import evaluation_key

CLIP, EXP_CLIP = "clip", "exp-clip"


def evaluate(
    head: Head | None, caches: list[Path], config: EvaluateConfig | None = None, **settings: Any
) -> list[dict]:
    """One record per (cache, method, prompt set): UAR, WAR, per-class recall and confusion matrix.

    `config` (default: EvaluateConfig()) with `settings` replacing its fields, e.g. `baseline=True`.
    `head=None` evaluates plain CLIP only; `baseline` adds plain CLIP rows next
    to the head's. `prompt_sets=None` takes every set the cache holds for the
    CLIP key. `label_map` translates numeric class names (see stages.shared.labels):
    a map's name or file, or the map as read. `device` computes the scores
    (float64 there; `auto` = CUDA when present).
    """
    cfg = dataclasses.replace(config or EvaluateConfig(), **settings)
    cfg.check()
    names = read_label_map(cfg.label_map) if isinstance(cfg.label_map, (str, Path)) else cfg.label_map
    if head is None and not cfg.baseline:
        raise ExpclipError("--head: give a head to evaluate, or --baseline for plain CLIP")
    where = resolve_device(cfg.device)
    spaces = (([(CLIP, head_space(None, where))] if cfg.baseline else [])
              + ([(EXP_CLIP, head_space(head, where))] if head is not None else []))
    records = []
    for path in caches:
        with CacheReader(Path(path)) as cache:
            key = evaluation_key(cache, head, cfg.clip_key)
            records += _evaluate_cache(cache, key, spaces, cfg.sets(), cfg.ensemble, names)
    return records


def _evaluate_cache(
    cache: CacheReader,
    key: str,
    spaces: list[tuple[str, Space]],
    prompt_sets: list[str] | None,
    ensemble: str,
    label_map: dict[str, str] | None,
) -> list[dict]:
    items = cache.items()
    labels = _scored(dataset_labels(items.class_names, items.labels, label_map, where=str(cache.path)), cache.dataset)
    keep = items.ok & (labels.y >= 0)
    if not keep.any():
        raise ExpclipError(f"{cache.path}: no decodable, labelled items to evaluate")
    sets = _resolve_sets(cache, key, prompt_sets)
    y = labels.y[keep]
    texts = {name: _class_prompts(cache, key, name, labels.classes) for name in sets}
    targets = {(method, name): class_targets(space, *texts[name], len(labels.classes), ensemble)
               for method, space in spaces for name in sets}
    predicted: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in targets}
    device = spaces[0][1].device
    with progress(items.kind) as bar:
        task = bar.add_task("evaluate", total=int(keep.sum()))
        for index, features in blocks(cache, key, keep):
            features = torch.from_numpy(features).to(device)  # as stored; float64 only per chunk, on the device
            for method, space in spaces:
                images = space.images(features)
                for name in sets:
                    predicted[(method, name)].append((images @ targets[(method, name)].T).argmax(1).cpu().numpy())
            bar.advance(task, len(index))
    common = {
        "dataset": cache.dataset, "classes": labels.classes, "cache": str(cache.path), "clip_key": key,
        "ensemble": ensemble, "skipped": int((~keep).sum()),
    }
    return [{"method": method, "prompt_set": name, **common,
             **_metrics(y, np.concatenate(predicted[(method, name)]), labels.classes)}
            for method, _ in spaces for name in sets]


def _scored(labels: Labels, dataset: str) -> Labels:
    """Only the classes the benchmark scores (AffectNet7 without Contempt); other items count as skipped."""
    scored = scored_classes(dataset)
    if scored is None or set(labels.classes) <= scored:
        return labels
    classes = [c for c in labels.classes if c in scored]
    remap = np.array([classes.index(c) if c in scored else -1 for c in labels.classes] + [-1])
    return Labels(classes=classes, y=remap[labels.y])


def _metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """WAR, UAR and per-class recall (%), None for a class absent from the ground truth."""
    labels = np.arange(len(classes))
    present = np.isin(labels, y)
    with sklearn.config_context(skip_parameter_validation=True):  # our own arrays, valid by construction
        recall = recall_score(y, pred, labels=labels, average=None, zero_division=0.0)
        war = accuracy_score(y, pred)
        confusion = confusion_matrix(y, pred, labels=labels)
    return {
        "uar": float(100 * recall[present].mean()),
        "war": float(100 * war),
        "n": int(len(y)),
        "per_class": {c: float(100 * r) if p else None for c, r, p in zip(classes, recall, present)},
        "confusion": confusion.tolist(),
    }


def _resolve_sets(cache: CacheReader, key: str, wanted: list[str] | None) -> list[str]:
    """Requested prompt sets (all by default), protocol sets first, each present in the cache."""
    available = cache.text_sets(key)
    order = list(protocol.prompt_sets())
    how = (f"add it with `expclip extract SOURCE --out {cache.path} --no-teacher --prompts FILE.json` "
           "(same SOURCE and --clip-model)")
    if wanted is None:
        if not available:
            raise ExpclipError(f"{cache.path}: no text features under /text/{key}; {how}")
        return sorted(available, key=lambda s: (order.index(s) if s in order else len(order), s))
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ExpclipError(
            f"--prompt-set: {cache.path} has no prompt set {', '.join(missing)} for {key} "
            f'(it has: {", ".join(available) or "none"}); {how} ({{"set-name": {{"Happiness": [...], ...}}}})'
        )
    return list(dict.fromkeys(wanted))


def _class_prompts(cache: CacheReader, key: str, name: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The set's prompts for the dataset's classes: (K, D) raw features and (K,) index into `classes`."""
    text = cache.text(key, name)
    canonical = [protocol.canonical_class(text.class_names[i]) for i in text.class_index]
    rows = [k for k, c in enumerate(canonical) if c in classes]
    lacking = [c for c in classes if c not in canonical]
    if lacking:
        raise ExpclipError(f"{cache.path}: prompt set {name!r} has no prompts for {', '.join(lacking)}")
    return text.features[rows].astype(np.float64), np.array([classes.index(canonical[k]) for k in rows])
