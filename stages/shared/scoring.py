"""Zero-shot scoring, the one rule that evaluate, search, audit and predict share.

An item is represented as the paper scores it: an image's feature, or for a
clip the mean over its frames (plain CLIP: of the unit frame features;
through a head: of the head-mapped frames), normalised. A prompt is its
feature mapped like an image row; a class's target is the mean of its unit
prompts (`ensemble="logits"`: the mean of the prompt cosines, by linearity),
or that mean renormalised (`"embedding"`, CLIP style). A `Space` turns rows,
clips and prompts into unit vectors whose dot products are these cosines;
`blocks` reads a cache's features a block at a time, so no cache is ever in
memory whole. Class probabilities follow the loss the scores were trained
with (`probabilities`): CLIP's softmax over classes of scale·score, or for a
sigmoid-trained CLIP (SigLIP: it has a logit bias) each class's own
sigmoid(scale·score + bias) — these need not sum to 1. evaluate scores in float64 and through G = WᵀW for a linear head
(`head_space`); faiss needs vectors comparable among themselves, so search
and audit map explicitly in float32 (`vector_space`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.shared.heads import Head

BLOCK_ROWS = 1 << 16  # frame rows read from a cache at once (~100 MB of 768-wide float16)
FRAME_CHUNK = 8192  # frames mapped at once: bounds the copies in the space's dtype and a head's activations


def unit(v: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (a zero row stays zero)."""
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)


class Space:
    """Plain CLIP space; subclasses map through a head.

    `images` gives (N, m) and `texts` (K, m) tensors of `dtype` on `device`, each
    row of unit length in the space's metric, so that `images @ texts.T` are
    the cosines.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float64) -> None:
        self.device, self.dtype = device, dtype

    def images(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) rows or (N, T, D) clips -> (N, m): a clip is the mean of its unit frames, normalised."""
        if features.ndim == 2:
            return self.unit(features.to(self.dtype))
        return self.unit(torch.cat([unit(c.to(self.dtype)).mean(dim=1) for c in _chunks(features)]))

    def texts(self, features: torch.Tensor) -> torch.Tensor:
        return self.unit(features.to(self.dtype))

    def unit(self, v: torch.Tensor) -> torch.Tensor:
        """Unit length in the space's metric."""
        return unit(v)


class GramSpace(Space):
    """A linear head W without ever forming W x: cosines through G = WᵀW, computed once per head.

    norm(W x)·norm(W t) = xᵀGt / sqrt(xᵀGx · tᵀGt), and the mean over frames of
    W I_t is W mean_t(I_t), so a clip reduces to its mean frame and nothing of
    size N x Dt is built: images become G x / sqrt(xᵀGx) and texts t / sqrt(tᵀGt),
    whose dot products are the cosines in the head's space. Image vectors are
    comparable with texts only, never with each other: not for faiss.
    """

    def __init__(self, weight: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(device, dtype)
        w = weight.detach().to(device, dtype)
        self.gram = w.T @ w  # (d, d)

    def images(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.dtype).mean(dim=1) if features.ndim == 3 else features.to(self.dtype)
        gx = x @ self.gram
        return gx / (gx * x).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()

    def unit(self, v: torch.Tensor) -> torch.Tensor:
        return v / ((v @ self.gram) * v).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()


class ModuleSpace(Space):
    """Any head module: applied per frame, averaged over frames, then normalised."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(device, dtype)
        self.module = module.eval().to(device)
        self.module_dtype = next(module.parameters()).dtype

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.to(self.module_dtype)).to(self.dtype)

    def images(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 2:
            return self.unit(torch.cat([self._map(c) for c in _chunks(features)]))
        return self.unit(torch.cat([self._map(c).mean(dim=1) for c in _chunks(features)]))

    def texts(self, features: torch.Tensor) -> torch.Tensor:
        return self.unit(self._map(features))


def _chunks(x: torch.Tensor) -> list[torch.Tensor]:
    rows = max(1, FRAME_CHUNK // (x.shape[1] if x.ndim == 3 else 1))
    return list(x.split(rows))


def logit_rule(head: Head | None, clip: dict) -> tuple[float, float | None]:
    """(scale, bias) that turn class scores into logits. A head was trained with a softmax over classes at
    the scale it records (the paper's: its CLIP's), so it has no bias; plain CLIP uses its own logit scale
    and, for a sigmoid-trained model, its logit bias (`clip`: the encoder's recorded attributes)."""
    if head is not None:
        return float(head.meta.get("logit_scale") or clip["logit_scale"]), None
    bias = clip.get("logit_bias")
    return float(clip["logit_scale"]), None if bias is None else float(bias)


def probabilities(logits: torch.Tensor, bias: float | None) -> torch.Tensor:
    """(n, C) logits -> probabilities: each class's sigmoid where the logits carry a bias (SigLIP), else the
    softmax over the classes."""
    return torch.sigmoid(logits) if bias is not None else torch.softmax(logits, dim=-1)


def head_space(head: Head | None, device: torch.device) -> Space:
    """Where zero-shot scores are taken (float64): plain CLIP without a head, through G = WᵀW for a linear
    head, else the module applied per frame."""
    if head is None:
        return Space(device)
    weight = head.linear_weight()
    return ModuleSpace(head.module, device) if weight is None else GramSpace(weight, device)


def vector_space(head: Head | None) -> Space:
    """Where items are compared with each other (faiss, audit): float32 vectors in the head's own space, on the
    CPU, where faiss takes them."""
    cpu = torch.device("cpu")
    return Space(cpu, torch.float32) if head is None else ModuleSpace(head.module, cpu, torch.float32)


def class_targets(space: Space, text: np.ndarray, cls: np.ndarray, n_classes: int, ensemble: str) -> torch.Tensor:
    """(C, m): image rows times these give the class scores — the mean of the class's prompt cosines, or the
    cosine with its renormalised mean prompt.

    The mean of a class's prompt cosines is the dot product with the mean of its
    unit prompts (linearity), so both ensembles cost one (N, m) x (m, C) product
    and differ only in renormalising that mean.
    """
    prompts = space.texts(torch.from_numpy(text).to(space.device))  # (K, m), unit length in the space's metric
    average = (np.eye(n_classes)[cls] / np.bincount(cls, minlength=n_classes)).T  # (C, K): 1/count per prompt
    means = torch.from_numpy(average).to(space.device, space.dtype) @ prompts  # (C, m)
    return means if ensemble == "logits" else space.unit(means)


def blocks(reader: CacheReader, key: str, keep: np.ndarray,
           block_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(item indices, their stored features) of the items where `keep` is True, about `block_rows` frame rows
    at a time (default BLOCK_ROWS), read as contiguous ranges."""
    path = fmt.image_path(key)
    shape, _ = reader.group_shape(path)
    step = max(1, (BLOCK_ROWS if block_rows is None else block_rows) // (shape[1] if len(shape) == 3 else 1))
    for a in range(0, len(keep), step):
        mask = keep[a:a + step]
        if mask.any():
            rows = reader.rows(path, a, a + len(mask))
            yield a + np.flatnonzero(mask), rows if mask.all() else rows[mask]
