"""Bounded work: frames per clip have a stated maximum, batches of clips are cut by their pixels, and a stop
request cuts decoding and encoding short (real signals, real DataLoader workers)."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from expclip import presets
from expclip.base.errors import ExpclipError
from expclip.cache.format import Items, partial_dir
from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import write_clips
from expclip.stages.encoders.clip import ClipEncoder
from expclip.stages.encoders.transforms import official_transform
from expclip.stages.extract import ExtractConfig, extract, loading, sources
from expclip.stages.extract.encode import batches_of, items_per_batch
from expclip.stages.extract.loading import STOPPED, FaceDataset, collate, load_image
from expclip.stages.shared.interrupts import StopRequest, ignore_in_worker

runner = CliRunner()
TOO_MANY = "sample 1 to 256 frames per clip (the paper samples 16)"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Five clips of eight 32-pixel frames: the clip list."""
    return write_clips(tmp_path_factory.mktemp("clips"), [0, 1, 2, 3, 4], frames=[8] * 5, size=32)


@pytest.mark.parametrize("frames", ["100000", "0", "257"])
def test_frames_outside_the_bound_are_one_line_before_any_work(clips, tmp_path, frames):
    out = tmp_path / "c.h5"
    result = runner.invoke(app, ["extract", str(clips), "--out", str(out), "--frames", frames, "--no-teacher"])
    assert result.exit_code == 2 and result.output == f"error: --frames {frames}: {TOO_MANY}\n"
    assert not out.exists() and not partial_dir(out).exists()


def test_the_api_and_presets_keep_the_same_bound(clips, tmp_path):
    assert len(sources.resolve(clips, frames=256).items.frame_index[0]) == 256
    with pytest.raises(ExpclipError) as e:
        sources.resolve(clips, frames=257)
    assert str(e.value) == f"--frames 257: {TOO_MANY}"
    for value in (100000, "16", 2.5, True):
        preset = tmp_path / "mine.json"
        preset.write_text(json.dumps({"extends": "_paper", "extract": {"clip_model": "ViT-B-32"}, "frames": value}))
        with pytest.raises(ExpclipError) as e:
            presets.load(str(preset))
        assert str(e.value) == f"{preset}: frames {value!r}: {TOO_MANY}"


def test_a_batch_of_clips_holds_at_most_the_pixel_budget():
    """The official transform gives float32 3x224x224 per frame: 16 frames are 9,633,792 bytes, so 256 MiB
    (268,435,456 bytes) holds 27 such clips; a batch never passes --batch-size, nor falls below one item."""
    items = Items(ids=["a"], labels=np.array([0]), class_names=["x"],
                  frame_index=np.zeros((1, 16), np.int32), num_frames=np.array([1], np.int32))
    dataset = FaceDataset([Path("a")], items, [official_transform()])
    assert dataset.item_bytes == 16 * 3 * 224 * 224 * 4
    assert items_per_batch(256, dataset.item_bytes) == 27
    assert items_per_batch(8, dataset.item_bytes) == 8
    assert items_per_batch(256, 2**29) == 1
    assert batches_of([(0, 10), (10, 13)], 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12]]


def test_clips_are_batched_by_pixels_and_encoded_a_batch_size_of_frames_at_a_time(clips, tiny_clip, tmp_path,
                                                                                    monkeypatch):
    """Two clips' pixels per batch and three frames per encoder pass give open_clip's own features."""
    sampled = [1, 3, 5, 7]  # 4 of 8 frames: the middles of 4 segments
    frames = [[sorted((clips.parent / "clips" / f"{i:05d}").iterdir())[k] for k in sampled] for i in range(5)]
    clip_bytes = 4 * np.asarray(Image.open(frames[0][0])).size  # the tiny CLIP's transform: uint8 3x32x32 a frame
    monkeypatch.setattr("expclip.stages.extract.encode.BATCH_BYTES", 2 * clip_bytes + 1)
    passes, encode = [], ClipEncoder.encode_images
    monkeypatch.setattr(ClipEncoder, "encode_images", lambda self, x: passes.append(len(x)) or encode(self, x))
    out = tmp_path / "bounded.h5"
    extract(sources.resolve(clips, frames=4), out,
            ExtractConfig(clip_model=tiny_clip, teacher=None, num_workers=0, batch_size=3, store_dtype="float32"))
    assert passes == [3, 3, 2, 3, 3, 2, 3, 1]  # clips (2, 2, 1) x 4 frames, 3 frames a pass

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    with torch.no_grad():
        expected = torch.stack([model.encode_image(torch.stack([preprocess(load_image(f)) for f in clip]))
                                for clip in frames])
    with CacheReader(out) as r:
        np.testing.assert_allclose(r.image(r.image_keys()[0]), expected.numpy(), rtol=1e-4, atol=1e-4)


def _slow_frames(started: Path, decoded: Path, image: Image.Image):
    def load(path: Path) -> Image.Image:
        with decoded.open("a") as f:
            f.write("x")
        started.touch()
        time.sleep(0.05)
        return image

    return load


def test_a_worker_stops_decoding_a_long_clip_when_the_main_process_is_asked_to_stop(tmp_path, monkeypatch):
    """The request is made after the worker started the clip; the worker leaves the other frames undecoded."""
    frames = 200  # 10 s of decoding at 50 ms a frame
    folder = tmp_path / "clip"
    folder.mkdir()
    for k in range(frames):
        (folder / f"{k:04d}.png").touch()
    started, decoded = tmp_path / "started", tmp_path / "decoded"
    monkeypatch.setattr(loading, "load_image", _slow_frames(started, decoded, Image.new("RGB", (8, 8))))
    items = Items(ids=["clip"], labels=np.array([0]), class_names=["x"],
                  frame_index=np.arange(frames, dtype=np.int32)[None], num_frames=np.array([frames], np.int32))
    halt = StopRequest()
    loader = DataLoader(FaceDataset([folder], items, [lambda im: torch.zeros(1)], halt), batch_size=1,
                        num_workers=1, collate_fn=collate, worker_init_fn=ignore_in_worker)
    batches = iter(loader)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.01)
    asked = time.time()
    halt.request(signal.SIGTERM)
    _, _, reasons = next(batches)
    assert reasons == [STOPPED] and time.time() - asked < 2
    assert 0 < len(decoded.read_text()) < frames


def test_sigterm_during_a_batch_stops_the_extract_at_once_and_writes_nothing(clips, tiny_clip, tmp_path, monkeypatch):
    """A real SIGTERM to this process while the first frame of a clip decodes: exit 143, one frame decoded."""
    seen = []
    real = loading.load_image

    def load(path: Path) -> Image.Image:
        seen.append(path)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path)

    monkeypatch.setattr(loading, "load_image", load)
    out = tmp_path / "stopped.h5"
    result = runner.invoke(app, ["extract", str(clips), "--out", str(out), "--clip-model", tiny_clip, "--no-teacher",
                                 "--frames", "4", "--num-workers", "0", "--batch-size", "64"])
    assert result.exit_code == 143, result.output
    assert result.output.splitlines()[-1] == "interrupted: re-run the same command to resume"
    assert len(seen) == 1  # not the other 19 frames of the batch
    assert not out.exists() and not list(partial_dir(out).glob("**/*.h5"))
