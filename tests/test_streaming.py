"""fit-head on selections larger than --max-memory: streamed blocks, shuffled buffers, the same head per seed.

The cache plants each row's number in its features (image column 0 = i, teacher
= [i, 1, 0, ...] before normalisation), so every streamed pair can be checked
against the row it must come from, independently of how it was read.
"""

import json
from pathlib import Path

import forked
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache import h5files
from expclip.cache.reader import CacheReader
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.fit_head import FitConfig, data, fit_head
from expclip.stages.shared.heads import load_head
from expclip.stages.shared.memory import parse_size

N, D, DT, BAD = 1500, 8, 12, (3, 700, 1499)
CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Path:
    """N rows whose features name their row; chunks of 16 rows so that blocks are small here."""
    path = tmp_path_factory.mktemp("stream") / "numbered.h5"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    x[:, 0] = np.arange(N)  # exact in float16 below 2048
    e = np.zeros((N, DT), dtype=np.float32)
    e[:, 0], e[:, 1] = np.arange(N), 1.0
    e[:, 2:] = rng.standard_normal((N, DT - 2)) * 0.01
    items = fmt.Items(
        ids=[f"f{i}.png" for i in range(N)], labels=np.zeros(N, dtype=np.int64), class_names=["Happiness"]
    )
    x[list(BAD)] = np.nan
    e[list(BAD)] = np.nan
    with pytest.MonkeyPatch.context() as m:
        m.setattr(h5files, "CHUNK_BYTES", 512)  # image chunks of 32 rows (16 bytes each), teacher of 16 (24 bytes)
        write_arrays(path, items, file_attrs={"dataset": "numbered"}, failures={i: "bad" for i in BAD}, aligned={
            fmt.image_path("ViT-T@t"): (x, {"model": "ViT-T", "pretrained": "t", "transform": "model",
                                            "logit_scale": 20.0, "embed_dim": D}),
            fmt.teacher_path("t5", "paper"): (e, {"model": "t5", "instruction": "Describe."})})
    return path


def rows_of(x: torch.Tensor, en: torch.Tensor) -> np.ndarray:
    """The row numbers of a batch, after checking that each image is paired with its own teacher row."""
    ids = x[:, 0].numpy()
    np.testing.assert_array_equal(np.rint((en[:, 0] / en[:, 1]).numpy()), ids)
    return ids.astype(int)


def stream(path, monkeypatch, blocks_per_buffer: int) -> data.Streamed:
    monkeypatch.setattr(data, "BLOCK_ROWS", 64)
    selection = data.select([path])
    row = (D + DT) * 2  # buffers hold rows as stored: float16
    return data.Streamed(selection, blocks_per_buffer * data.BUFFERS * 64 * row, CPU)


def test_blocks_are_whole_chunks_of_every_group(numbered):
    with CacheReader(numbered) as r:
        chunks = [r.chunk_rows(p) for p in data.select([numbered]).paths]
    assert chunks == [32, 16]  # powers of two: they line up
    assert data.block_rows(chunks, 10**9) == 4096 and data.block_rows([512, 128], 10**9) == 4096
    assert data.block_rows([682, 128], 10**9) == 682 * 6  # an older cache's chunks that do not line up: one group's
    assert data.block_rows([8192, 512], 3000) == 2560  # a small budget: whole chunks of the smaller ones only


def test_an_epoch_pairs_every_usable_row_with_its_teacher_at_most_once(numbered, monkeypatch):
    s = stream(numbered, monkeypatch, blocks_per_buffer=4)
    assert s.describe() == {"mode": "streaming", "block_rows": 64, "buffer_rows": 256}
    usable = N - len(BAD)
    for epoch_seed in (0, 1):
        seen = [rows_of(x, en) for x, en in s.epoch(100, torch.Generator().manual_seed(epoch_seed))]
        assert len(seen) == usable // 100 and all(len(b) == 100 for b in seen)
        flat = np.concatenate(seen)
        assert len(set(flat)) == len(flat) and not set(BAD) & set(flat)  # no row twice, no failed row
        assert set(flat) <= set(range(N))


def test_batches_mix_rows_of_the_blocks_in_one_buffer(numbered, monkeypatch):
    """The first batch draws from the first buffer's 4 blocks only (64 rows each, 24 blocks in all)."""
    s = stream(numbered, monkeypatch, blocks_per_buffer=4)
    first = rows_of(*next(iter(s.epoch(100, torch.Generator().manual_seed(0)))))
    assert len({i // 64 for i in first}) <= 4 < len({i // 64 for i in range(N)})


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(numbered, monkeypatch):
    s = stream(numbered, monkeypatch, blocks_per_buffer=3)

    def run(seed: int) -> np.ndarray:
        return np.concatenate([rows_of(*b) for b in s.epoch(64, torch.Generator().manual_seed(seed))])

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_fit_head_streams_when_the_selection_exceeds_max_memory(numbered, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "BLOCK_ROWS", 64)
    needed = data.select([numbered]).in_memory_bytes()
    small = FitConfig(epochs=2, batch_size=64, device="cpu", max_memory=str(needed - 1))
    a = fit_head([numbered], tmp_path / "a", small)
    fit_head([numbered], tmp_path / "b", small)
    assert a["mode"] == "streaming" and a["steps_per_epoch"] == (N - len(BAD)) // 64
    assert torch.equal(load_head(tmp_path / "a").module.weight, load_head(tmp_path / "b").module.weight)
    stored = json.loads((tmp_path / "a.json").read_text())
    assert (
        stored["mode"] == "streaming"
        and stored["block_rows"] == 64
        and stored["config"]["max_memory"] == str(needed - 1)
    )

    roomy = fit_head(
        [numbered], tmp_path / "c", FitConfig(epochs=2, batch_size=64, device="cpu", max_memory=str(needed))
    )
    default = fit_head([numbered], tmp_path / "d", FitConfig(epochs=2, batch_size=64, device="cpu"))
    assert roomy["mode"] == default["mode"] == "in-memory"  # what fits trains exactly as before
    assert torch.equal(load_head(tmp_path / "c").module.weight, load_head(tmp_path / "d").module.weight)
    assert roomy["history"] == default["history"]


@pytest.mark.parametrize("text, size", [("1GB", 10**9), ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30), ("1.5 GB", 1.5e9),
                                        ("4096", 4096), ("10kib", 10240)])
def test_sizes(text, size):
    assert parse_size(text, "--max-memory") == size


@pytest.mark.parametrize("bad", ["12XB", "-1GB", "0", "GB", "1 G B"])
def test_a_bad_size_is_one_line(numbered, tmp_path, bad):
    result = runner.invoke(app, ["fit-head", str(numbered), "--out", str(tmp_path / "h"), "--max-memory", bad])
    assert result.exit_code == 2
    assert f"--max-memory {bad!r}: write a size such as 1GB, 512MB or 2GiB" in result.output


def streamed_growth(cache: Path, out: Path, max_memory: str) -> dict:
    """Run in a forked child: how far a streamed fit raises the child's own peak RSS (VmHWM, which starts at what
    the child shares with its parent; ru_maxrss would count the parent's own peak)."""
    from expclip.stages.fit_head.train import linear_grad

    def peak() -> int:
        return 1024 * next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

    p = torch.nn.Parameter(torch.zeros(4, 4))  # first what every fit allocates once
    p.grad = linear_grad(p, torch.ones(2, 4), torch.ones(2, 4), torch.tensor(1.0))[2]
    torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True).step()
    before = peak()
    meta = fit_head([cache], out, FitConfig(epochs=1, batch_size=512, device="cpu", max_memory=max_memory))
    return {"mode": meta["mode"], "grown": peak() - before}


def test_streaming_memory_does_not_grow_with_the_cache(tmp_path):
    """160,000 rows of 16 + 1008 float16 features: 655 MB as float32, what the in-memory path would hold.
    Streamed with --max-memory 32MB, a child process's peak RSS grows by less than a quarter of that
    (the budget, the stream's read-ahead and the items' ids). A narrow CLIP side keeps the head's matmuls
    cheap: the memory held depends on the row's width, not on how it splits between the two groups."""
    n, d, dt = 160_000, 16, 1008
    items = fmt.Items(ids=[f"{i}" for i in range(n)], labels=np.zeros(n, dtype=np.int64), class_names=["Happiness"])
    cache = tmp_path / "many.h5"
    ramp = np.linspace(-1, 1, n, dtype=np.float16)[:, None]  # cheap to make, not constant
    write_arrays(cache, items, file_attrs={"dataset": "many"}, aligned={
        fmt.image_path("ViT-T@t"): (np.repeat(ramp, d, axis=1),
                                    {"model": "ViT-T", "pretrained": "t", "transform": "model", "logit_scale": 20.0}),
        fmt.teacher_path("t5", "paper"): (np.repeat(ramp, dt, axis=1) + np.float16(2),
                                          {"model": "t5", "instruction": "Describe."})})
    features = n * (d + dt) * 4
    done = forked.run(streamed_growth, cache, tmp_path / "head", "32MB", timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["mode"] == "streaming" and found["grown"] < features / 4, (found, features)


def test_a_non_finite_usable_row_is_named_with_its_block(tmp_path, monkeypatch):
    """A NaN in a row marked ok (a damaged or hand-made cache) stops a streamed fit with the file and rows."""
    monkeypatch.setattr(data, "BLOCK_ROWS", 64)
    n = 300
    items = fmt.Items(ids=[f"{i}" for i in range(n)], labels=np.zeros(n, dtype=np.int64), class_names=["Happiness"])
    e = np.ones((n, DT), dtype=np.float32)
    e[200, 3] = np.nan
    cache = tmp_path / "nan.h5"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(h5files, "CHUNK_BYTES", 512)
        write_arrays(cache, items, file_attrs={"dataset": "nan"}, aligned={
            fmt.image_path("ViT-T@t"): (np.ones((n, D), dtype=np.float32), {"model": "ViT-T", "logit_scale": 20.0}),
            fmt.teacher_path("t5", "paper"): (e, {"model": "t5", "instruction": "Describe."})})
    with pytest.raises(ExpclipError, match=rf"{cache} rows 192-256: non-finite features in rows marked ok"):
        fit_head([cache], tmp_path / "h", FitConfig(epochs=1, batch_size=32, device="cpu", max_memory="8KB"))
