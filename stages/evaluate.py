"""Zero-shot evaluation of a head (Exp-CLIP) and of plain CLIP on evaluation caches.

Scores follow the paper: an image's score for a prompt is the cosine between
the head-mapped image and the head-mapped prompt, and a class's score is the
mean of its prompts' scores (`ensemble="logits"`); `ensemble="embedding"`
instead takes the cosine with the renormalised mean of the class's normalised
mapped prompts (CLIP style). A clip's image is the mean over its frames of the
mapped frame features, normalised; plain CLIP (`baseline`) averages the
normalised frame features. The logit scale multiplies every score equally and
changes no argmax, so it is left out. WAR is accuracy and UAR the mean recall
over the dataset's classes present in the ground truth, both in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import sklearn
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.shared import protocol
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.heads import Head
from expclip.stages.shared.labels import dataset_labels
from expclip.stages.shared.select import evaluation_key
from expclip.stages.shared.vocabulary import AUTO, ENSEMBLE, ENSEMBLES

CLIP, EXP_CLIP = "clip", "exp-clip"
FRAME_CHUNK = 8192  # frames processed at once: bounds float64 copies and (frames, Dt) activations
BLOCK_ROWS = 1 << 16  # frame rows read from the cache at once (~100 MB of 768-wide float16)


def evaluate(
    head: Head | None,
    caches: list[Path],
    *,
    prompt_sets: list[str] | None = None,
    ensemble: str = ENSEMBLE,
    baseline: bool = False,
    label_map: dict[str, str] | None = None,
    clip_key: str | None = None,
    device: str = AUTO,
) -> list[dict]:
    """One record per (cache, method, prompt set): UAR, WAR, per-class recall and confusion matrix.

    `head=None` evaluates plain CLIP only; `baseline=True` adds plain CLIP rows
    next to the head's. `prompt_sets=None` takes every set the cache holds for
    the CLIP key. `label_map` translates numeric class names (see stages.labels).
    `device` computes the scores (float64 there; `auto` = CUDA when present).
    """
    if head is None and not baseline:
        raise ExpclipError("--head: give a head to evaluate, or --baseline for plain CLIP")
    if ensemble not in ENSEMBLES:
        raise ExpclipError(f"--ensemble: {ensemble!r} is not one of {', '.join(ENSEMBLES)}")
    where = resolve_device(device)
    spaces = (([(CLIP, Space(where))] if baseline else [])
              + ([(EXP_CLIP, head_space(head, where))] if head is not None else []))
    records = []
    for path in caches:
        with CacheReader(Path(path)) as cache:
            key = evaluation_key(cache, head, clip_key)
            records += _evaluate_cache(cache, key, spaces, prompt_sets, ensemble, label_map)
    return records


class Space:
    """Where cosines are taken: plain CLIP space here; subclasses map through a head.

    `images` gives (N, m) and `texts` (K, m) float64 tensors on the space's
    device, each row of unit length in the space's metric, so that
    `images @ texts.T` are the cosines.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def images(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised image (N, D) or mean of normalised frame (N, T, D) features."""
        if features.ndim == 2:
            return self.unit(features.double())
        return self.unit(torch.cat([_sum_of_unit_frames(c.double()) for c in _chunks(features)]))

    def texts(self, features: torch.Tensor) -> torch.Tensor:
        return self.unit(features)

    def unit(self, v: torch.Tensor) -> torch.Tensor:
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)


class GramSpace(Space):
    """A linear head W without ever forming W x: cosines through G = WᵀW, computed once per head.

    norm(W x)·norm(W t) = xᵀGt / sqrt(xᵀGx · tᵀGt), and the mean over frames of
    W I_t is W mean_t(I_t), so a clip reduces to its mean frame and nothing of
    size N x Dt is built: images become G x / sqrt(xᵀGx) and texts t / sqrt(tᵀGt),
    whose dot products are the cosines in the head's space (float64 throughout).
    """

    def __init__(self, weight: torch.Tensor, device: torch.device) -> None:
        super().__init__(device)
        w = weight.detach().to(device, torch.float64)
        self.gram = w.T @ w  # (d, d)

    def images(self, features: torch.Tensor) -> torch.Tensor:
        x = features.double().mean(dim=1) if features.ndim == 3 else features.double()
        gx = x @ self.gram
        return gx / (gx * x).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()

    def unit(self, v: torch.Tensor) -> torch.Tensor:
        return v / ((v @ self.gram) * v).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()


class ModuleSpace(Space):
    """Any head module (MLP): applied per frame, averaged over frames, then normalised."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        super().__init__(device)
        self.module = module.eval().to(device)
        self.dtype = next(module.parameters()).dtype

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.to(self.dtype)).double()

    def images(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 2:
            return self.unit(torch.cat([self._map(c) for c in _chunks(features)]))
        return self.unit(torch.cat([self._map(c).mean(dim=1) for c in _chunks(features)]))

    def texts(self, features: torch.Tensor) -> torch.Tensor:
        return self.unit(self._map(features))


def _sum_of_unit_frames(clips: torch.Tensor) -> torch.Tensor:
    """sum_t I_t / |I_t| of (n, T, D) clips, without materialising the normalised frames."""
    norms = torch.einsum("ntd,ntd->nt", clips, clips).clamp_min(1e-24).sqrt()
    return torch.einsum("ntd,nt->nd", clips, 1 / norms)


def _chunks(x: torch.Tensor) -> list[torch.Tensor]:
    rows = max(1, FRAME_CHUNK // (x.shape[1] if x.ndim == 3 else 1))
    return list(x.split(rows))


def head_space(head: Head, device: torch.device) -> Space:
    """Where a head scores: through G = WᵀW for a linear head, else the module applied per frame."""
    weight = head.linear_weight()
    return ModuleSpace(head.module, device) if weight is None else GramSpace(weight, device)


def _evaluate_cache(
    cache: CacheReader,
    key: str,
    spaces: list[tuple[str, Space]],
    prompt_sets: list[str] | None,
    ensemble: str,
    label_map: dict[str, str] | None,
) -> list[dict]:
    items = cache.items()
    labels = dataset_labels(items.class_names, items.labels, label_map, where=str(cache.path))
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
    for features in _blocks(cache, key, keep):
        features = torch.from_numpy(features).to(device)  # as stored; float64 only per chunk, on the device
        for method, space in spaces:
            images = space.images(features)
            for name in sets:
                predicted[(method, name)].append((images @ targets[(method, name)].T).argmax(1).cpu().numpy())
    common = {
        "dataset": cache.dataset, "classes": labels.classes, "cache": str(cache.path), "clip_key": key,
        "ensemble": ensemble, "skipped": int((~keep).sum()),
    }
    return [{"method": method, "prompt_set": name, **common,
             **_metrics(y, np.concatenate(predicted[(method, name)]), labels.classes)}
            for method, _ in spaces for name in sets]


def _blocks(cache: CacheReader, key: str, keep: np.ndarray) -> Iterator[np.ndarray]:
    """The kept items' stored features, BLOCK_ROWS frame rows at a time (contiguous reads: a cache of
    half a million frames is never in memory whole)."""
    path = fmt.image_path(key)
    (shape, _) = cache.group_shape(path)
    items = max(1, BLOCK_ROWS // (shape[1] if len(shape) == 3 else 1))
    for a in range(0, len(keep), items):
        mask = keep[a:a + items]
        if mask.any():
            rows = cache.rows(path, a, a + len(mask))
            yield rows if mask.all() else rows[mask]


def class_targets(space: Space, text: np.ndarray, cls: np.ndarray, n_classes: int, ensemble: str) -> torch.Tensor:
    """(C, m): image rows times these give the class scores — the mean of the class's prompt cosines, or the
    cosine with its renormalised mean prompt.

    The mean of a class's prompt cosines is the dot product with the mean of its
    unit prompts (linearity), so both ensembles cost one (N, m) x (m, C) product
    and differ only in renormalising that mean.
    """
    prompts = space.texts(torch.from_numpy(text).to(space.device))  # (K, m), unit length in the space's metric
    average = (np.eye(n_classes)[cls] / np.bincount(cls, minlength=n_classes)).T  # (C, K): 1/count per prompt
    means = torch.from_numpy(average).to(space.device) @ prompts  # (C, m)
    return means if ensemble == "logits" else space.unit(means)


def _metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """WAR, UAR and per-class recall (%), None for a class absent from the ground truth."""
    labels = np.arange(len(classes))
    present = np.isin(labels, y)
    with sklearn.config_context(skip_parameter_validation=True):  # our own arrays; validation was 40% of the time
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
    how = (
        f"add it with `expclip extract SOURCE --out {cache.path} --no-teacher --prompts FILE.json`"
        " (same SOURCE and --clip-model)"
    )
    if wanted is None:
        if not available:
            raise ExpclipError(f"{cache.path}: no text features under /text/{key}; {how}")
        return sorted(available, key=lambda s: (order.index(s) if s in order else len(order), s))
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ExpclipError(
            f"--prompt-set: {cache.path} has no prompt set {', '.join(missing)} for {key} "
            f"(it has: {', '.join(available) or 'none'}); {how} ({{\"set-name\": {{\"Happiness\": [...], ...}}}})"
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
