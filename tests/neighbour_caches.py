"""Small caches for the search and audit tests: features written as extract writes them (float16)."""

from pathlib import Path

import numpy as np

from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays

KEY = "ViT-T@nn"
D = 24


def write_cache(path: Path, features: np.ndarray, *, labels=None, failed=(), teacher: bool = False) -> Path:
    """Images (n, D) or clips (n, T, D) stored as float16; `failed` rows NaN with items/ok False."""
    n = len(features)
    labels = np.arange(n) % 3 if labels is None else labels
    items = fmt.Items(
        ids=[f"{path.stem}/{i}" for i in range(n)], labels=np.asarray(labels), class_names=["a", "b", "c"]
    )
    if features.ndim == 3:
        items.frame_index = np.tile(np.arange(features.shape[1], dtype=np.int32), (n, 1))
        items.num_frames = np.full(n, features.shape[1], dtype=np.int32)
    rows = features.astype(np.float32).copy()
    rows[list(failed)] = np.nan
    aligned = {fmt.image_path(KEY): (rows, {"model": "ViT-T", "pretrained": "nn", "transform": "model",
                                            "logit_scale": 50.0, "embed_dim": D})}
    if teacher:
        aligned[fmt.teacher_path("t", "paper")] = (np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32),
                                                   {"model": "t", "instruction": "x"})
    write_arrays(path, items, file_attrs={"dataset": path.stem, "source": "synthetic"}, aligned=aligned,
                 failures={i: "bad" for i in failed})
    return path


def stored(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted(rng, n_a: int, n_b: int, copies: list[tuple[int, int]], frames: int = 0, noise: float = 0.02):
    """Random caches A and B where A's rows `copies[i][0]` are noisy copies of B's rows `copies[i][1]`."""
    shape = (lambda n: (n, frames, D)) if frames else (lambda n: (n, D))
    a, b = rng.standard_normal(shape(n_a)).astype(np.float32), rng.standard_normal(shape(n_b)).astype(np.float32)
    for i, j in copies:
        a[i] = b[j] + noise * rng.standard_normal(b[j].shape)
    return a, b
