"""Benchmarks run rarely, on machines CI lacks; their smoke paths run here so a GPU session never finds them broken."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration

from expclip.cache.reader import CacheReader
from expclip.stages.encoders.teacher import load_teacher
from expclip.stages.shared.heads import load_head
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION
from expclip.stages.shared.vocabulary import MODEL_TRANSFORM

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str, monkeypatch):
    """Import benchmarks/NAME.py (registered, so its dataclasses and pickled worker functions resolve) as
    `python benchmarks/NAME.py` would: with its folder on the path, for the modules it imports from beside it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_one_smoke(tmp_path, capsys, monkeypatch):
    """The tiny path runs the real `extract` with injected encoders and prints every row of the table: two
    batches of two faces after a warm-up of two more, one DataLoader worker (its smallest run that still
    streams several batches through a worker process)."""
    faces = 4
    rows = _script("stage_one", monkeypatch).main(
        ["--tiny", "--faces", str(faces), "--batch-size", "2", "--workers", "1", "--workdir", str(tmp_path)]
    )

    printed = capsys.readouterr().out
    assert "expclip extract (stage one)" in printed and "torch " in printed
    assert [r.name for r in rows][:2] == ["CLIP alone (--no-teacher)", "CLIP + teacher"]
    assert rows[2].name.startswith("  teacher alone, T5 input ")
    assert "e2e ÷ script" in printed
    for row in rows:
        assert row.name.strip()[:12] in printed
        assert row.plain > 0 and row.flop > 0 and row.cosine > 0.99  # tiny models: bf16 barely moves features
    for row in rows[:2]:
        assert row.e2e.rate > 0 and row.e2e.rerun > 0 and row.script > 0
        assert sum(row.e2e.split.values()) > 0
        assert f"{row.e2e.rate / row.script:.2f}×" in printed
    assert rows[1].flop > rows[0].flop  # the teacher's FLOPs are counted too

    with CacheReader(tmp_path / "clip-teacher.h5") as cache:
        assert len(cache.items()) == faces and not cache.failures()
        (teacher,) = cache.teacher_keys()
        image, taught = cache.image(cache.image_keys()[0]), cache.teacher(*teacher)
    assert image.shape[0] == taught.shape[0] == faces
    assert np.isfinite(image).all() and np.isfinite(taught).all()
    with CacheReader(tmp_path / "clip.h5") as cache:
        assert len(cache.items()) == faces and cache.teacher_keys() == []


def test_audit_scale_smoke(tmp_path, capsys, monkeypatch):
    """200 planted-into rows (four blocks of 64) against 50 on the CPU, in a child process: every planted pair
    found, nothing else."""
    (run,) = _script("audit_scale", monkeypatch).main(
        ["--rows", "200", "--against", "50", "--planted", "5", "--devices", "cpu", "--block-rows", "64",
         "--workdir", str(tmp_path)]
    )

    printed = capsys.readouterr().out
    assert "expclip audit at scale" in printed and "faiss " in printed and "5 / 5" in printed
    assert run.device == "cpu" and run.rows == 200 and run.against == 50
    assert run.exact and run.planted_found == run.planted == 5
    assert run.rows_per_s > 0 and run.peak_rss >= run.baseline_rss > 0
    assert list(tmp_path.iterdir()) == []  # the temporary caches are removed


def test_the_plain_script_computes_what_the_teacher_computes(tiny_blip2, monkeypatch):
    """The anchor is the paper's teacher written from the submodules: on the same weights (float32 here) it gives
    the product's pooled feature, so the two rates compare like with like."""
    anchor = _script("plain_anchor", monkeypatch)
    teacher = load_teacher(str(tiny_blip2), DEFAULT_INSTRUCTION, device=torch.device("cpu"), precision="fp32",
                           transform=MODEL_TRANSFORM)
    pixels = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        plain = anchor.teacher_forward(teacher.model, teacher.instruction_ids)(teacher.on_device(pixels))
    torch.testing.assert_close(plain.float(), teacher.encode_images(pixels), rtol=1e-5, atol=1e-5)


def test_the_benchmark_builds_the_checkpoints_architectures(tmp_path, tiny_blip2, monkeypatch):
    """BLIP-2 Flan-T5-XXL as its config.json sets it (exact GELU in T5's gated FFN, ViT-g and Q-Former at
    transformers' defaults) and in the loader's dtypes; ViT-L-14 with the openai tag's QuickGELU."""
    stage_one = _script("stage_one", monkeypatch)
    config = Blip2Config.from_pretrained(stage_one.teacher_folder(tmp_path, real=True))
    text, vision, qformer = config.text_config, config.vision_config, config.qformer_config
    assert (text.d_model, text.d_ff, text.num_heads, text.num_layers, text.d_kv) == (4096, 10240, 64, 24, 64)
    assert (text.dense_act_fn, text.is_gated_act, text.layer_norm_epsilon) == ("gelu", True, 1e-6)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size,
            vision.patch_size, vision.image_size) == (1408, 39, 16, 6144, 14, 224)
    assert (qformer.hidden_size, qformer.num_hidden_layers, qformer.cross_attention_frequency) == (768, 12, 2)
    assert config.num_query_tokens == 32
    with torch.device("meta"):
        ffn = Blip2ForConditionalGeneration(config).language_model.encoder.block[0].layer[1].DenseReluDense
    assert type(ffn.act).__name__ == "GELUActivation"  # not NewGELUActivation, T5Config's gated-gelu default

    built = stage_one.random_teacher(tiny_blip2, torch.device("cpu"), "bf16")
    loaded = load_teacher(str(tiny_blip2), DEFAULT_INSTRUCTION, device=torch.device("cpu"), precision="bf16",
                          transform=MODEL_TRANSFORM)
    dtypes = {n: p.dtype for n, p in loaded.model.named_parameters()}
    assert {n: p.dtype for n, p in built.model.named_parameters()} == dtypes

    clip = stage_one.random_clip("ViT-B-32", torch.device("cpu"), "fp32", "openai")
    assert type(clip.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_predict_rate_smoke(capsys, monkeypatch):
    """The tiny path prints the three rows: predict --detector none, the encoder alone, batch size 1."""
    rows = _script("predict_rate", monkeypatch).main(["--tiny", "--faces", "6", "--batch-size", "4",
                                                      "--per-picture", "2"])
    printed = capsys.readouterr().out
    assert [r.faces for r in rows] == [6, 6, 2] and all(r.rate > 0 for r in rows)
    assert all(r.name in printed for r in rows) and "batch size 4" in printed and "(a)/(b):" in printed


def _fp8_caches(tmp_path):
    """Two training caches of the same faces (the second's features slightly off, as fp8's would be) and a
    held-out cache with a prompt set, all under one CLIP key."""
    from expclip.cache import format as fmt
    from expclip.cache.writer import write_arrays

    rng = np.random.default_rng(3)
    clip = {"model": "ViT-T", "pretrained": "random", "transform": "model", "logit_scale": 50.0, "embed_dim": 16}
    image, taught = rng.standard_normal((96, 16)), rng.standard_normal((96, 24))
    paths = []
    for name, noise in (("bf16", 0.0), ("fp8", 0.05)):
        items = fmt.Items(ids=[f"{i}.png" for i in range(96)], labels=np.zeros(96, np.int64), class_names=["Happiness"])
        aligned = {fmt.image_path("ViT-T@random"): ((image + noise * rng.standard_normal(image.shape)).astype(
            np.float32), clip), fmt.teacher_path("tiny-t5", "paper"): (taught.astype(np.float32),
                                                                       {"model": "tiny-t5", "instruction": "x"})}
        write_arrays(tmp_path / f"{name}.h5", items, file_attrs={"dataset": name, "source": "synthetic"},
                     aligned=aligned)
        paths.append(tmp_path / f"{name}.h5")
    classes = ["Happiness", "Sadness", "Anger"]
    items = fmt.Items(ids=[f"e{i}.png" for i in range(30)], labels=np.arange(30) % 3, class_names=classes)
    text = (rng.standard_normal((6, 16)).astype(np.float32),
            {"prompts": [f"p{i}" for i in range(6)], "class_names": classes, "class_index": [0, 0, 1, 1, 2, 2]})
    held_out = tmp_path / "held-out.h5"
    write_arrays(held_out, items, file_attrs={"dataset": "held-out", "source": "synthetic"},
                 aligned={fmt.image_path("ViT-T@random"): (rng.standard_normal((30, 16)).astype(np.float32), clip)},
                 small={fmt.text_path("ViT-T@random", "a_photo_of_a_face"): text})
    return paths[1], paths[0], held_out, text


def test_fp8_effect_compares_heads_and_their_zero_shot_classes(tmp_path, capsys, monkeypatch):
    """Identical features give identical heads and classes; perturbed ones, heads whose agreement equals a
    numpy computation of both heads' zero-shot classes."""
    effect = _script("fp8_effect", monkeypatch)
    fp8, bf16, held_out, (text, attrs) = _fp8_caches(tmp_path)
    same = effect.main(["--fp8", str(bf16), "--bf16", str(bf16), "--eval", str(held_out), "--epochs", "1",
                        "--batch-size", "32"])
    assert same["cos"] == pytest.approx(1.0) and same["agreement"] == 1.0 and same["fp8_uar"] == same["bf16_uar"]
    found = effect.compare(fp8, bf16, held_out, "a_photo_of_a_face",
                           effect.FitConfig(epochs=1, batch_size=32, device="cpu"), tmp_path / "heads")
    assert found["cos"] < 1.0 and found["items"] == 30

    def classes(head_path):
        w = load_head(head_path).module.weight.detach().double().numpy()
        with CacheReader(held_out) as r:
            x = r.image("ViT-T@random").astype(np.float64) @ w.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t = text.astype(np.float64) @ w.T
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        return np.stack([(x @ t[np.array(attrs["class_index"]) == c].T).mean(1) for c in range(3)], 1).argmax(1)

    agree = np.mean(classes(tmp_path / "heads" / "fp8") == classes(tmp_path / "heads" / "bf16"))
    assert found["agreement"] == pytest.approx(agree)
    assert "heads on fp8 vs bf16 features" in capsys.readouterr().out
