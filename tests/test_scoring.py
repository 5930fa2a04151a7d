"""The one zero-shot rule (stages.shared.scoring) against numpy: evaluate's spaces and search's vectors agree."""

import numpy as np
import pytest
import torch

from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.cache.writer import write_arrays
from expclip.stages.shared import scoring
from expclip.stages.shared.heads import Head, build_head

D, DT = 12, 20
KEY = "ViT-T@score"


def norm(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def linear(w: np.ndarray) -> Head:
    head = Head(module=build_head("linear", D, DT), kind="linear", meta={})
    head.module.weight.data = torch.from_numpy(w.astype(np.float32))
    return head


@pytest.mark.parametrize("frames", [0, 5])
@pytest.mark.parametrize("with_head", [False, True])
def test_evaluate_and_search_represent_items_and_prompts_alike(frames, with_head):
    """Cosines of items with prompts: the scoring space (float64, Gram for a linear head), the vectors search
    indexes (float32, the head applied) and numpy (map per frame, mean, normalise) are the same numbers."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, frames, D) if frames else (40, D)).astype(np.float16).astype(np.float32)
    t = rng.standard_normal((9, D)).astype(np.float32)
    w = rng.standard_normal((DT, D)).astype(np.float32)
    head = linear(w) if with_head else None
    xs, ts = x.astype(np.float64), t.astype(np.float64)
    if with_head:
        expected = norm((xs @ w.T).mean(axis=1) if frames else xs @ w.T) @ norm(ts @ w.T).T
    else:
        expected = norm(norm(xs).mean(axis=1) if frames else xs) @ norm(ts).T
    scored = scoring.head_space(head, torch.device("cpu"))
    assert isinstance(scored, scoring.GramSpace if with_head else scoring.Space)
    cosines = scored.images(torch.from_numpy(x)) @ scored.texts(torch.from_numpy(t)).T
    assert cosines.dtype == torch.float64
    np.testing.assert_allclose(cosines.numpy(), expected, rtol=0, atol=1e-12)
    vectors = scoring.vector_space(head)
    items, prompts = vectors.images(torch.from_numpy(x)), vectors.images(torch.from_numpy(t))
    assert items.dtype == torch.float32 and np.allclose(torch.linalg.vector_norm(items, dim=-1).numpy(), 1, atol=1e-6)
    np.testing.assert_allclose((items @ prompts.T).numpy(), expected, rtol=0, atol=1e-5)


def test_class_targets_average_prompt_cosines_or_their_renormalised_mean():
    rng = np.random.default_rng(4)
    x, t = rng.standard_normal((15, D)), rng.standard_normal((10, D))
    cls = np.array([0, 0, 1, 2, 2, 2, 1, 0, 2, 1])
    space = scoring.head_space(None, torch.device("cpu"))
    logits = space.images(torch.from_numpy(x)) @ scoring.class_targets(space, t, cls, 3, "logits").T
    cosines = norm(x) @ norm(t).T
    per_class = np.stack([cosines[:, cls == c].mean(1) for c in range(3)], 1)
    np.testing.assert_allclose(logits.numpy(), per_class, atol=1e-12)
    embedding = space.images(torch.from_numpy(x)) @ scoring.class_targets(space, t, cls, 3, "embedding").T
    means = norm(np.stack([norm(t)[cls == c].mean(0) for c in range(3)]))
    np.testing.assert_allclose(embedding.numpy(), norm(x) @ means.T, atol=1e-12)


@pytest.mark.parametrize("frames", [0, 3])
def test_blocks_read_the_kept_items_once_a_block_at_a_time(tmp_path, monkeypatch, frames):
    rng = np.random.default_rng(5)
    n = 23
    image = rng.standard_normal((n, frames, D) if frames else (n, D)).astype(np.float16)  # as the cache stores
    items = fmt.Items(ids=[f"i{k}" for k in range(n)], labels=np.zeros(n, dtype=np.int64), class_names=["a"])
    if frames:
        items.frame_index = np.tile(np.arange(frames, dtype=np.int32), (n, 1))
        items.num_frames = np.full(n, frames, dtype=np.int32)
    path = tmp_path / "c.h5"
    write_arrays(path, items, file_attrs={"dataset": "c", "source": "synthetic"},
                 aligned={fmt.image_path(KEY): (image, {"model": "ViT-T", "pretrained": "score", "embed_dim": D})})
    keep = np.ones(n, dtype=bool)
    keep[[0, 4, 5, 22]] = False
    reads = []
    real_rows = CacheReader.rows
    monkeypatch.setattr(CacheReader, "rows", lambda self, p, a, b: reads.append((a, b)) or real_rows(self, p, a, b))
    with CacheReader(path) as reader:
        got = list(scoring.blocks(reader, KEY, keep, block_rows=6))
    per_block = 2 if frames else 6  # 6 frame rows: two clips of three frames, or six images
    assert reads == [(a, min(a + per_block, n)) for a in range(0, n, per_block)
                     if keep[a:a + per_block].any()]
    np.testing.assert_array_equal(np.concatenate([i for i, _ in got]), np.flatnonzero(keep))
    np.testing.assert_array_equal(np.concatenate([r for _, r in got]), image[keep])
