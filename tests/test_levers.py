"""Stage one's speed levers on the CPU: bf16 CLIP weights, torch.compile's selection and padding, fp8's refusals.

The GPU paths themselves (compile on CUDA, float8 products) run in
benchmarks/on_gpu.sh; here their selection logic is tested without a GPU. The
real torch.compile test runs only where EXPCLIP_SLOW_TESTS=1 (inductor compiles
C++ for tens of seconds on a shared CPU).
"""

import os
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from typer.testing import CliRunner

from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.stages.encoders.clip import identity, load_clip
from expclip.stages.encoders.compiled import StaticBatch, compile_encoder, inductor_cache
from expclip.stages.encoders.images import load_image
from expclip.stages.encoders.teacher import load_teacher
from expclip.stages.encoders.towers import towers
from expclip.stages.extract import ExtractConfig
from expclip.stages.extract.levers import compiles
from expclip.stages.search.queries import cache_encoder
from expclip.stages.shared import fp8
from expclip.stages.shared.precision import recorded_name
from expclip.stages.shared.protocol import DEFAULT_INSTRUCTION

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    write_faces(folder, ["happy", "sad"], 3, size=40)
    return folder


def _extract(faces, out, tiny_clip, *args: str):
    return runner.invoke(app, ["extract", str(faces), "--out", str(out), "--clip-model", tiny_clip, "--no-teacher",
                               "--num-workers", "0", "--batch-size", "4", *args])


def _clip(tiny_clip, precision="fp32"):
    return load_clip(tiny_clip, None, device=CPU, precision=precision, transform="model")


def _image_features(out) -> tuple[np.ndarray, dict]:
    with CacheReader(out) as r:
        key = r.image_keys()[0]
        return r.image(key).astype(np.float32), r.image_attrs(key)


def test_bf16_clip_weights_are_recorded_close_to_float32_and_never_count_as_autocast(faces, tiny_clip, tmp_path):
    out = tmp_path / "weights.h5"
    assert _extract(faces, out, tiny_clip, "--precision", "bf16", "--clip-weights", "bfloat16").exit_code == 0
    low, attrs = _image_features(out)
    assert attrs["precision"] == "bfloat16-weights"
    with CacheReader(out) as r:
        paths, (key,) = r.items().ids, r.image_keys()
    assert cache_encoder(out, key, "cpu").precision == "bf16"  # search queries join this space by bf16 autocast
    clip = _clip(tiny_clip)
    high = clip.encode_images(torch.stack([clip.transform(load_image(faces / p)) for p in paths])).numpy()
    cosine = (low * high).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(high, axis=1)
    assert cosine.min() > 0.99 and not np.allclose(low, high, atol=1e-4)  # bf16 changes them, a little
    result = _extract(faces, out, tiny_clip, "--precision", "bf16")  # autocast over float32 weights
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "precision=bfloat16-weights" in result.output and "precision=bfloat16," in result.output


def test_bf16_clip_weights_need_bf16_and_keep_layernorms_float32(faces, tiny_clip, tmp_path):
    result = _extract(faces, tmp_path / "c.h5", tiny_clip, "--clip-weights", "bfloat16")
    assert result.exit_code == 2
    assert "--clip-weights bfloat16: needs --precision bf16 (this run resolves to fp32 from auto)" in result.output
    from expclip.stages.encoders.towers import bf16_weights

    model = _clip(tiny_clip, "bf16").model
    bf16_weights(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert model.visual.conv1.weight.dtype == torch.bfloat16
    assert model.visual.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.bfloat16


def test_compile_is_off_by_default_refused_on_the_cpu_and_on_only_when_asked():
    assert ExtractConfig().compile == "auto"
    assert not compiles(ExtractConfig(), torch.device("cuda"))
    assert not compiles(ExtractConfig(compile="off"), torch.device("cuda"))
    assert compiles(ExtractConfig(compile="on"), torch.device("cuda"))
    assert not compiles(ExtractConfig(compile="auto"), CPU)
    with pytest.raises(Exception, match=r"^--compile on: compiling pays only on CUDA; on the CPU use --compile off "
                                        r"\(or auto\)$"):
        compiles(ExtractConfig(compile="on"), CPU)


def test_compile_on_the_cpu_is_refused_in_one_line_by_the_cli(faces, tiny_clip, tmp_path):
    result = _extract(faces, tmp_path / "c.h5", tiny_clip, "--compile", "on")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--compile on: compiling pays only on CUDA" in result.output and not (tmp_path / "c.h5").exists()


def test_compile_wraps_every_tower_and_pads_the_last_batch(tiny_clip, tiny_blip2):
    teacher = load_teacher(str(tiny_blip2), DEFAULT_INSTRUCTION, device=CPU, precision="fp32", transform="model")
    model = teacher.model
    assert towers(teacher) == {"vision_model": model.vision_model, "qformer": model.qformer,
                               "language": model.language_model.encoder}
    clip = _clip(tiny_clip)
    assert towers(clip) == {"visual": clip.model.visual}
    compiled, seen = [], []
    pixels = torch.stack([clip.transform(PIL.Image.new("RGB", (40, 40), (i * 40, 9, 200)))
                          for i in range(3)])
    eager = clip.encode_images(pixels)
    hook = clip.model.visual.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    static, seconds = compile_encoder(clip, 4, compile_fn=compiled.append)
    assert compiled == [clip.model.visual] and seconds > 0 and seen == [4]  # the warm-up pass, full size
    assert isinstance(static, StaticBatch) and static.attrs is clip.attrs and static.width == clip.width
    torch.testing.assert_close(static.encode_images(pixels), eager, rtol=1e-5, atol=1e-5)
    assert seen == [4, 4]  # three rows padded to four
    hook.remove()
    with pytest.raises(ValueError, match="6 rows in one pass of a tower compiled for 4"):
        static.encode_images(torch.cat([pixels, pixels]))


def test_inductor_cache_is_the_users_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inductor_cache() == tmp_path / "expclip" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "expclip" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert inductor_cache() == tmp_path / "mine"


@pytest.mark.skipif(os.environ.get("EXPCLIP_SLOW_TESTS") != "1", reason="inductor compiles C++ for tens of seconds "
                    "on the CPU: set EXPCLIP_SLOW_TESTS=1")
def test_compiled_clip_gives_the_eager_features(tiny_clip, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    clip = _clip(tiny_clip)
    pixels = torch.rand(3, 3, 32, 32)
    eager = clip.encode_images(pixels)
    static, _ = compile_encoder(_clip(tiny_clip), 4)
    torch.testing.assert_close(static.encode_images(pixels), eager, rtol=1e-4, atol=1e-4)


def test_fp8_is_recorded_as_its_own_precision(tiny_clip):
    assert recorded_name("fp8") == "float8_e4m3fn"
    assert identity(tiny_clip, None, "model", "fp8")[1]["precision"] == "float8_e4m3fn"
    assert identity(tiny_clip, None, "model", "bf16")[1]["precision"] == "bfloat16"


def test_fp8_is_refused_in_one_line_on_the_cpu(faces, tiny_clip, tmp_path):
    result = _extract(faces, tmp_path / "c.h5", tiny_clip, "--precision", "fp8")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("--precision fp8: float8 products need a CUDA GPU of compute capability >= 8.9; on the CPU use bf16 or "
            "fp32") in " ".join(result.output.split())


def test_fp8_is_refused_on_older_gpus_and_without_torchao(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(Exception, match=r"^--precision fp8: this GPU has compute capability 8\.0; float8 products "
                                        r"need >= 8\.9 \(Ada, H100, H200\): use bf16$"):
        fp8.check_fp8(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    pytest.importorskip("torchao")
    assert hasattr(fp8.check_fp8(cuda), "quantize_")
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if torchao were not installed
    with pytest.raises(Exception, match=r"^--precision fp8: torchao is not installed; pip install 'expclip\[fp8\]'$"):
        fp8.check_fp8(cuda)


def test_fp8_converts_only_large_bf16_linear_layers():
    def linear(n_in, n_out, dtype=torch.bfloat16):
        return torch.nn.Linear(n_in, n_out, device="meta", dtype=dtype)

    assert fp8.large_linear(linear(1024, 4096)) and fp8.large_linear(linear(4096, 1024))
    assert not fp8.large_linear(linear(1024, 4096, torch.float32))  # kept in float32 by transformers
    assert not fp8.large_linear(linear(768, 4096)) and not fp8.large_linear(linear(1024, 1030))
    assert not fp8.large_linear(torch.nn.LayerNorm(4096, device="meta", dtype=torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="float8 products need a GPU of compute capability >= 8.9")
def test_fp8_layers_stay_close_to_bf16():
    pytest.importorskip("torchao")
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024))
    mlp = mlp.to(cuda, torch.bfloat16)
    x = torch.randn(256, 1024, device=cuda, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = mlp(x).float()
        assert fp8.to_fp8(mlp, cuda) == 2
        after = mlp(x).float()
    assert torch.nn.functional.cosine_similarity(before, after).min() > 0.99


def test_teacher_and_clip_attention_run_through_sdpa(tiny_clip, tiny_blip2, monkeypatch):
    """transformers 5 loads every BLIP-2 part with SDPA by default, and open_clip's attention (need_weights=False)
    calls F.scaled_dot_product_attention under autocast: a later version that changes either shows here."""
    teacher = load_teacher(str(tiny_blip2), DEFAULT_INSTRUCTION, device=CPU, precision="fp32", transform="model")
    config = teacher.model.config
    parts = (config, config.vision_config, config.qformer_config, config.text_config)
    assert [c._attn_implementation for c in parts] == ["sdpa"] * 4
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    clip = _clip(tiny_clip, "bf16")
    clip.encode_images(torch.rand(2, 3, 32, 32))
    assert len(calls) == len(clip.model.visual.transformer.resblocks)


def test_apply_levers_compiles_every_encoder_for_the_batch_size_when_on(tiny_clip):
    from expclip.stages.extract.levers import apply_levers

    clip, compiled = _clip(tiny_clip), []
    cfg = ExtractConfig(compile="on", batch_size=3)
    done, seconds = apply_levers({"image/x": clip}, cfg, torch.device("cuda"), "fp32", compile_fn=compiled.append)
    assert compiled == [clip.model.visual] and seconds > 0
    assert isinstance(done["image/x"], StaticBatch) and done["image/x"].batch_size == 3
    same, none = apply_levers({"image/x": clip}, ExtractConfig(), torch.device("cuda"), "fp32")
    assert same["image/x"] is clip and none == 0.0  # auto: not compiled
