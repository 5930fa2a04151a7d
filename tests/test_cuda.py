"""The CUDA paths against the CPU's: skipped where there is no GPU (CI); run on a lent GPU machine.

Each test computes the same thing on the CPU (the reference the rest of the
suite checks against independent computations) and on CUDA, and compares.
"""

import json

import numpy as np
import pytest
import torch
from test_fit_head import make_cache
from typer.testing import CliRunner

from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.stages.evaluate import evaluate
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.fit_head.train import fit_heads
from expclip.stages.shared.heads import load_head

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BASE = dict(lr=0.5, momentum=0.9, weight_decay=1e-3, batch_size=128, epochs=3, seed=3)


def _weight(path):
    return load_head(path).linear_weight().double()


def _cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cuda") / "train.h5", n=1000, bad_rows=(5,))


def test_fit_head_fp32_on_cuda_equals_the_cpu(cache, tmp_path):
    cpu = fit_head([cache], tmp_path / "cpu", FitConfig(**BASE, device="cpu"))
    gpu = fit_head([cache], tmp_path / "gpu", FitConfig(**BASE, device="cuda"))
    assert gpu["device"].startswith("cuda") and gpu["gradient"] == "by-hand" and gpu["mode"] == "in-memory"
    assert [h["loss"] for h in gpu["history"]] == pytest.approx([h["loss"] for h in cpu["history"]], rel=1e-4)
    torch.testing.assert_close(_weight(tmp_path / "gpu"), _weight(tmp_path / "cpu"), rtol=1e-4, atol=1e-5)
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.parametrize("precision, tolerance", [("tf32", 1e-2), ("bf16", 2e-2)])
def test_reduced_precisions_on_cuda_stay_close_to_fp32(cache, tmp_path, precision, tolerance):
    full = fit_head([cache], tmp_path / "fp32", FitConfig(**BASE, device="cuda"))
    part = fit_head([cache], tmp_path / precision, FitConfig(**BASE, device="cuda", precision=precision))
    for a, b in zip(full["history"], part["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < tolerance
    assert _cosine(_weight(tmp_path / "fp32"), _weight(tmp_path / precision)) > 0.999
    assert torch.get_float32_matmul_precision() == "highest"  # tf32 was let in for the run only


def test_heads_trained_together_on_cuda_equal_each_alone(cache, tmp_path):
    grid = [FitConfig(**{**BASE, "lr": lr, "weight_decay": wd}, device="cuda") for lr in (0.1, 0.5) for wd in (0, 1e-2)]
    fit_heads([cache], [tmp_path / f"k{i}" for i in range(4)], grid)
    for i, config in enumerate(grid):
        fit_head([cache], tmp_path / f"alone{i}", config)
        torch.testing.assert_close(_weight(tmp_path / f"k{i}"), _weight(tmp_path / f"alone{i}"), rtol=1e-4, atol=1e-5)


def test_streaming_on_cuda_is_deterministic_and_follows_the_cpu(cache, tmp_path):
    small = dict(BASE, max_memory="200KB")
    runs = [
        fit_head([cache], tmp_path / f"s{i}", FitConfig(**small, device=d))
        for i, d in enumerate(("cuda", "cuda", "cpu"))
    ]
    assert {r["mode"] for r in runs} == {"streaming"}
    assert torch.equal(_weight(tmp_path / "s0"), _weight(tmp_path / "s1"))
    torch.testing.assert_close(_weight(tmp_path / "s0"), _weight(tmp_path / "s2"), rtol=1e-4, atol=1e-5)


def test_evaluate_on_cuda_equals_the_cpu(cache, tmp_path):
    from test_evaluate import ALPHABETICAL, CLIP, KEY, D, synthetic, text_groups
    from test_evaluate import make_cache as eval_cache

    from expclip.stages.shared import protocol
    from expclip.stages.shared.heads import Head, build_head

    rng = np.random.default_rng(0)
    centers, labels, image = synthetic(rng, 90, ALPHABETICAL, frames=4)
    texts = text_groups({k: protocol.prompt_sets()[k] for k in ("an_expression_of", "ensemble_ten")}, centers, rng)
    clips = eval_cache(tmp_path / "clips.h5", ALPHABETICAL, labels, image, texts)
    for kind in ("linear", "mlp"):
        head = Head(module=build_head(kind, D, 32), kind=kind, meta={"clip_key": KEY, "clip": CLIP})
        cpu = evaluate(head, [clips], baseline=True, device="cpu")
        gpu = evaluate(head, [clips], baseline=True, device="cuda")
        for a, b in zip(cpu, gpu, strict=True):
            assert (a["war"], a["uar"], a["confusion"]) == (b["war"], b["uar"], b["confusion"])


def test_extract_on_cuda_matches_the_cpu(tmp_path, tiny_clip, tiny_blip2):
    faces = tmp_path / "faces"
    write_faces(faces, ["happy", "sad"], 6, size=40)
    runner = CliRunner()
    last = f"cuda:{torch.cuda.device_count() - 1}"  # --device cuda:N, the machine's last GPU
    for name, device in (("cpu", "cpu"), ("cuda", last)):
        result = runner.invoke(app, ["extract", str(faces), "--out", str(tmp_path / f"{name}.h5"), "--clip-model",
                                     tiny_clip, "--teacher", str(tiny_blip2), "--device", device, "--precision", "fp32",
                                     "--num-workers", "0", "--batch-size", "4"])
        assert result.exit_code == 0, result.output
    with CacheReader(tmp_path / "cpu.h5") as a, CacheReader(tmp_path / "cuda.h5") as b:
        key = a.image_keys()[0]
        np.testing.assert_allclose(b.image(key), a.image(key), rtol=0, atol=2e-3)  # float16 rows of two devices
        tkey = a.teacher_keys()[0]
        np.testing.assert_allclose(b.teacher(*tkey), a.teacher(*tkey), rtol=0, atol=5e-3)
        assert json.loads(json.dumps(a.items().ids)) == b.items().ids


def test_audit_on_cuda_finds_the_cpus_pairs(tmp_path):
    from neighbour_caches import planted, write_cache

    from expclip.stages.audit import audit

    rng = np.random.default_rng(7)
    a, b = planted(rng, 3000, 500, [(5, 1), (17, 40), (2990, 499)], frames=2)
    ca, cb = write_cache(tmp_path / "a.h5", a), write_cache(tmp_path / "b.h5", b)
    cpu, gpu = (audit([ca], [cb], threshold=0.9, device=d, block_rows=1000) for d in ("cpu", "cuda"))
    key = lambda r: [(p["a"], p["a_id"], p["a_frame"], p["b"], p["b_id"], p["b_frame"]) for p in r["pairs"]]  # noqa: E731
    assert sorted(key(cpu)) == sorted(key(gpu)) and len(key(cpu)) >= 3
    np.testing.assert_allclose(
        sorted(p["score"] for p in gpu["pairs"]), sorted(p["score"] for p in cpu["pairs"]), atol=1e-5
    )
