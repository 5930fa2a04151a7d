"""`expclip extract` end to end on tiny checkpoints: features, bad files, resuming, SIGKILL."""

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import forked
import numpy as np
import open_clip
import pytest
import torch
from conftest import ELEVEN, FRAMES_OF_40, PAPER_INSTRUCTION, PROMPT_SETS, SEVEN
from forked import one_thread
from typer.testing import CliRunner

from expclip.cache.format import partial_dir
from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import write_clips, write_faces
from expclip.stages.encoders import clip as clip_module
from expclip.stages.encoders import teacher as teacher_module
from expclip.stages.encoders.images import load_image
from expclip.stages.encoders.teacher import load_teacher
from expclip.stages.extract import ExtractConfig, extract, sources
from expclip.stages.shared import protocol

runner = CliRunner()


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Synthetic faces in class folders, plus three bad files the run must skip and record."""
    folder = tmp_path_factory.mktemp("faces")
    write_faces(folder, ["happy", "sad", "Anger"], 5, size=40)
    (folder / "sad" / "zero.png").write_bytes(b"")
    (folder / "sad" / "text.jpg").write_text("not an image")
    good = (folder / "happy" / "0.png").read_bytes()
    (folder / "happy" / "truncated.png").write_bytes(good[: len(good) // 3])
    return folder


def _extract_cli(*args: str):
    return runner.invoke(
        app, ["extract", *map(str, args), "--num-workers", "0", "--batch-size", "4", "--shard-size", "4"]
    )


@pytest.fixture(scope="module")
def train_cache(faces, tiny_clip, tiny_blip2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "train.h5"
    result = _extract_cli(faces, "--out", out, "--clip-model", tiny_clip, "--teacher", tiny_blip2)
    assert result.exit_code == 0, result.output
    return out


def test_image_and_text_features_equal_open_clip(train_cache, faces, tiny_clip):
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    tokenizer = open_clip.get_tokenizer(tiny_clip)
    key = Path(tiny_clip.removeprefix("local-dir:")).name
    with CacheReader(train_cache) as r:
        items = r.items()
        ok = items.ok
        assert r.image_keys() == [key]
        images = torch.stack([preprocess(load_image(faces / i)) for i, good in zip(items.ids, ok) if good])
        with torch.no_grad():
            expected = model.encode_image(images).numpy()
        stored = r.image(key)
        assert stored.dtype == np.float16
        np.testing.assert_allclose(stored[ok].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
        assert r.image_attrs(key)["logit_scale"] == pytest.approx(50.0, rel=1e-5)  # read from the model, not 100
        reference = protocol.prompt_sets()
        assert r.text_sets(key) == sorted(PROMPT_SETS)
        text = r.text(key, "ensemble_five")
        order = protocol.class_order()
        assert text.class_names == ELEVEN
        assert text.prompts == [p for c in order for p in reference["ensemble_five"][c]]
        assert [order[i] for i in text.class_index] == [c for c in order for _ in reference["ensemble_five"][c]]
        with torch.no_grad():
            expected_text = model.encode_text(tokenizer(text.prompts)).numpy()
        np.testing.assert_allclose(text.features, expected_text, rtol=1e-5, atol=1e-5)


def test_teacher_features_equal_the_encoder_and_bad_files_are_recorded(train_cache, faces, tiny_blip2):
    teacher = load_teacher(str(tiny_blip2), protocol.DEFAULT_INSTRUCTION, device=torch.device("cpu"),
                           precision="fp32", transform="model")
    with CacheReader(train_cache) as r:
        items = r.items()
        assert r.teacher_keys() == [(Path(tiny_blip2).name, "paper")]
        stored = r.teacher(Path(tiny_blip2).name, "paper")
        attrs = r.teacher_attrs(Path(tiny_blip2).name, "paper")
        assert attrs["instruction"] == PAPER_INSTRUCTION and attrs["pooling"] == "mean"
        good = [i for i, ok in zip(items.ids, items.ok) if ok]
        expected = teacher.encode_images(torch.stack([teacher.transform(load_image(faces / i)) for i in good]))
        np.testing.assert_allclose(stored[items.ok].astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)
        assert r.failures() == {
            "happy/truncated.png": "truncated or corrupt image (image file is truncated)",
            "sad/text.jpg": "not an image",
            "sad/zero.png": "zero-byte file",
        }
        bad = [items.ids.index(i) for i in r.failures()]
        assert not items.ok[bad].any() and np.isnan(stored[bad]).all()
        assert items.ok.sum() == 15 and items.class_names == ["Anger", "happy", "sad"]


def test_rerun_on_complete_cache_runs_no_encoder(train_cache, faces, tiny_clip, tiny_blip2, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder was loaded for a complete cache")

    monkeypatch.setattr(clip_module, "load_clip", refuse)
    monkeypatch.setattr(teacher_module, "load_teacher", refuse)
    before = train_cache.stat().st_mtime_ns
    result = _extract_cli(faces, "--out", train_cache, "--clip-model", tiny_clip, "--teacher", tiny_blip2)
    assert result.exit_code == 0, result.output
    assert "already complete, nothing to encode" in result.output
    assert train_cache.stat().st_mtime_ns == before


def test_other_configuration_under_existing_key_is_refused(train_cache, faces, tiny_clip):
    result = _extract_cli(faces, "--out", train_cache, "--clip-model", tiny_clip, "--no-teacher", "--precision", "bf16")
    assert result.exit_code == 2
    assert (
        "was made by [" in result.output
        and "precision=float32" in result.output
        and "precision=bfloat16" in result.output
    )
    assert "Traceback" not in result.output


def test_user_prompt_sets_extend_the_cache(train_cache, faces, tiny_clip, tmp_path):
    prompts = tmp_path / "mine.json"
    prompts.write_text(json.dumps({"mine": {"happy": ["a grin."], "Sadness": ["tears.", "a frown."]}}))
    result = _extract_cli(faces, "--out", train_cache, "--clip-model", tiny_clip, "--no-teacher", "--prompts", prompts)
    assert result.exit_code == 0, result.output
    key = Path(tiny_clip.removeprefix("local-dir:")).name
    with CacheReader(train_cache) as r:
        text = r.text(key, "mine")
        assert text.prompts == ["a grin.", "tears.", "a frown."] and text.class_index.tolist() == [0, 1, 1]
        assert r.teacher_keys()  # earlier groups survive the extension
    prompts.write_text(json.dumps({"mine": {"bored": ["x"]}}))
    result = _extract_cli(faces, "--out", train_cache, "--clip-model", tiny_clip, "--no-teacher", "--prompts", prompts)
    assert result.exit_code == 2 and "unknown class 'bored'" in result.output


def test_clip_list_samples_frames_by_the_protocol(tmp_path, tiny_clip):
    annotations = write_clips(tmp_path, [0, 3, 1], frames=[40, 9, 17], size=32)
    src = sources.resolve(annotations, dataset="DFEW")
    out = tmp_path / "clips.h5"
    extract(
        src, out, ExtractConfig(clip_model=tiny_clip, teacher=None, num_workers=0, batch_size=2, store_dtype="float32")
    )
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    with CacheReader(out) as r:
        items = r.items()
        assert items.class_names == SEVEN and items.labels.tolist() == [0, 3, 1]
        of_17 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]  # int(17/32 + 17/16 i)
        assert items.frame_index.tolist() == [FRAMES_OF_40, [0] * 16, of_17]
        assert items.frame_index[1].tolist() == [0] * 16  # <= 16 frames: frame 0 sixteen times
        features = r.image(r.image_keys()[0])
        assert features.shape == (3, 16, 32)
        frames = sorted((tmp_path / "clips" / "00000").iterdir())
        with torch.no_grad():
            expected = model.encode_image(
                torch.stack([preprocess(load_image(frames[i])) for i in items.frame_index[0]])
            )
        np.testing.assert_allclose(features[0], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_missing_teacher_folder_is_a_clear_error(faces, tiny_clip, tmp_path):
    result = _extract_cli(faces, "--out", tmp_path / "x.h5", "--clip-model", tiny_clip, "--teacher", tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output


def _first_shards(out: Path) -> int:
    return len(list(partial_dir(out).glob("*/**/000000000-000000001.h5")))


def test_sigkill_then_rerun_equals_uninterrupted_run(tiny_clip, tiny_blip2, tmp_path):
    """A real SIGKILL of `expclip extract` (a forked child: tests/forked.py) as soon as its first shards exist;
    the resumed cache equals an uninterrupted one byte for byte (every group's data sha256 and provenance, items,
    failures). All three compute with one thread, as the child does."""
    few = tmp_path / "few"
    write_faces(few, ["happy", "sad"], 4, size=24)
    (few / "sad" / "zero.png").write_bytes(b"")  # a failure must survive the resume too
    args = ["extract", str(few), "--clip-model", tiny_clip, "--teacher", str(tiny_blip2),
            "--num-workers", "0", "--batch-size", "1", "--shard-size", "1"]
    out, reference = tmp_path / "killed.h5", tmp_path / "reference.h5"
    proc = forked.cli([*args, "--out", str(out)], stdout=forked.DEVNULL, stderr=forked.DEVNULL)
    with one_thread(), ThreadPoolExecutor(1) as pool:  # the uninterrupted run, while the child encodes
        uninterrupted = pool.submit(runner.invoke, app, [*args, "--out", str(reference)])
        deadline = time.time() + 120
        while _first_shards(out) < 2 and proc.poll() is None and time.time() < deadline:  # image and teacher
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert uninterrupted.result().exit_code == 0, uninterrupted.result().output
    assert not out.exists() and len(list(partial_dir(out).glob("*/**/*.h5"))) < 2 * 9  # killed mid-run

    with one_thread():
        resumed = runner.invoke(app, [*args, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    encoded, earlier = map(int, re.search(r"\(9 items: (\d+) encoded, (\d+) encoded earlier, 1 failed\)",
                                          " ".join(resumed.output.split())).groups())  # a long path wraps the line
    assert encoded + earlier == 8 and earlier >= 1  # finished shards not redone
    with CacheReader(reference) as a, CacheReader(out) as b:
        assert a.items().same_rows(b.items()) and (a.items().ok == b.items().ok).all() and not a.items().ok.all()
        assert a.failures() == b.failures() and a.group_paths() == b.group_paths()
        for path in a.group_paths():
            assert a.group_attrs(path) == b.group_attrs(path)  # sha256 of the data included
            assert a.group_shape(path) == b.group_shape(path)
    assert not partial_dir(out).exists()


def test_official_transform_feeds_one_unnormalised_tensor_to_both_encoders(tmp_path, faces):
    """--transform exp-clip-official: Resize((224,224)) + ToTensor, the same tensor for CLIP and BLIP-2."""
    from expclip.demo.checkpoints import save_tiny_blip2, save_tiny_clip
    from expclip.stages.encoders.transforms import official_transform

    clip_name = save_tiny_clip(tmp_path / "clip224", image_size=224)
    blip = save_tiny_blip2(tmp_path / "blip224", image_size=224)
    out = tmp_path / "official.h5"
    result = _extract_cli(
        faces, "--out", out, "--clip-model", clip_name, "--teacher", blip, "--transform", "exp-clip-official"
    )
    assert result.exit_code == 0, result.output
    model, _, _ = open_clip.create_model_and_transforms(clip_name)
    teacher = load_teacher(str(blip), protocol.DEFAULT_INSTRUCTION, device=torch.device("cpu"),
                           precision="fp32", transform="model")
    with CacheReader(out) as r:
        items = r.items()
        good = [i for i, ok in zip(items.ids, items.ok) if ok]
        pixels = torch.stack([official_transform()(load_image(faces / i)) for i in good])
        assert pixels.shape[1:] == (3, 224, 224) and pixels.min() >= 0 and pixels.max() <= 1
        assert r.image_keys() == ["clip224+official"] and r.teacher_keys() == [("blip224+official", "paper")]
        assert r.image_attrs("clip224+official")["transform"] == "exp-clip-official"
        with torch.no_grad():
            expected_image = model.encode_image(pixels).numpy()
        expected_teacher = teacher.encode_images(pixels).numpy()  # the very same tensor, not the processor's
        np.testing.assert_allclose(
            r.image("clip224+official")[items.ok].astype(np.float32), expected_image, rtol=2e-3, atol=2e-3
        )
        np.testing.assert_allclose(
            r.teacher("blip224+official", "paper")[items.ok].astype(np.float32), expected_teacher, rtol=2e-3, atol=2e-3
        )


def test_prompt_sets_are_keyed_by_prompts_and_their_classes(train_cache, faces, tiny_clip, tmp_path):
    prompts = tmp_path / "moved.json"
    prompts.write_text(json.dumps({"moved": {"Happiness": ["a", "b"], "Sadness": ["c"]}}))
    assert (
        _extract_cli(
            faces, "--out", train_cache, "--clip-model", tiny_clip, "--no-teacher", "--prompts", prompts
        ).exit_code
        == 0
    )
    prompts.write_text(
        json.dumps({"moved": {"Happiness": ["a"], "Sadness": ["b", "c"]}})
    )  # same prompts, other classes
    result = _extract_cli(faces, "--out", train_cache, "--clip-model", tiny_clip, "--no-teacher", "--prompts", prompts)
    assert result.exit_code == 2 and "/text/" in result.output and "prompts_sha256" in result.output
    for bad, message in (({"a/b": {"Happiness": ["x"]}}, "must use only letters"), ({"empty": {}}, "is empty")):
        prompts.write_text(json.dumps(bad))
        result = _extract_cli(
            faces, "--out", train_cache, "--clip-model", tiny_clip, "--no-teacher", "--prompts", prompts
        )
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_resuming_with_other_options_names_the_unfinished_groups(faces, tiny_clip, tiny_blip2, tmp_path):
    from expclip.cache.writer import Extraction

    out = tmp_path / "c.h5"
    src = sources.resolve(faces)
    job = Extraction(out, src.items, {}, shard_size=4)  # as if a run with the teacher had been killed early
    job.register("teacher/other/paper", {"model": "other"})
    result = _extract_cli(faces, "--out", out, "--clip-model", tiny_clip, "--no-teacher")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unfinished groups" in result.output and "/teacher/other/paper" in result.output
    assert not out.exists() and partial_dir(out).exists()  # nothing lost: the shards stay for a re-run


def test_the_batch_size_default_depends_on_the_device():
    assert ExtractConfig().batch_for("cuda") == 256 and ExtractConfig().batch_for("cpu") == 64
    assert ExtractConfig(batch_size=7).batch_for("cuda") == 7
