"""The cache writer/reader: documented layout, refusal of mismatches, crash safety under SIGKILL."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from expclip.base.errors import ExpclipError
from expclip.cache.format import Items, partial_dir
from expclip.cache.reader import CacheReader, open_cache
from expclip.cache.writer import Extraction, write_arrays


def _items(n=10):
    return Items(ids=[f"c{i % 3}/{i}.png" for i in range(n)], labels=np.arange(n) % 3, class_names=["a", "b", "c"])


def test_layout_matches_docs(tmp_path):
    path = tmp_path / "c.h5"
    img = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    write_arrays(
        path,
        _items(),
        file_attrs={"dataset": "toy", "source": "src"},
        aligned={"image/m@t": (img, {"model": "m", "pretrained": "t", "logit_scale": 50.0})},
        small={
            "text/m@t/class_name": (
                np.ones((2, 8), np.float32),
                {"prompts": ["x.", "y."], "class_names": ["Happiness", "Sadness"], "class_index": [0, 1]},
            )
        },
    )
    with h5py.File(path, "r") as f:  # plain h5py, as a user's script would read it
        assert f.attrs["format"] == "expclip-cache" and f.attrs["format_version"] == 2 and f.attrs["complete"]
        assert f.attrs["kind"] == "images" and f.attrs["dataset"] == "toy"
        assert [s.decode() for s in f["items/id"][:]] == _items().ids
        assert f["items/label"].dtype == np.int64 and f["items/ok"][:].all()
        assert [s.decode() for s in f["items/class_names"][:]] == ["a", "b", "c"]
        assert f["image/m@t"].dtype == np.float16 and f["image/m@t"].shape == (10, 8)
        np.testing.assert_array_equal(f["image/m@t"][:], img.astype(np.float16))
        assert f["image/m@t"].attrs["logit_scale"] == 50.0 and len(f["image/m@t"].attrs["sha256"]) == 64
        assert list(f["text/m@t/class_name"].attrs["class_index"]) == [0, 1]
    assert not partial_dir(path).exists()


def test_extending_keeps_groups_and_refuses_other_config_under_same_key(tmp_path):
    path = tmp_path / "c.h5"
    img = np.ones((10, 4), np.float32)
    write_arrays(path, _items(), file_attrs={}, aligned={"image/k": (img, {"model": "A", "pretrained": "p"})})
    write_arrays(path, _items(), file_attrs={}, aligned={"teacher/t/paper": (img * 2, {"model": "T"})})
    with CacheReader(path) as r:
        assert r.image_keys() == ["k"] and r.teacher_keys() == [("t", "paper")]
        assert (r.teacher("t", "paper") == 2).all()
    with pytest.raises(
        ExpclipError,
        match=r"/image/k was made by \[model=A, pretrained=p\]; this run asks for \[model=B, pretrained=p\]",
    ):
        write_arrays(path, _items(), file_attrs={}, aligned={"image/k": (img, {"model": "B", "pretrained": "p"})})
    with pytest.raises(ExpclipError, match="differ from this source"):
        write_arrays(path, _items(9), file_attrs={}, aligned={"image/j": (img[:9], {"model": "B"})})


def test_reader_refuses_incomplete_and_foreign_files(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["format"] = "expclip-cache"
        f.attrs["format_version"] = 2
    with pytest.raises(ExpclipError, match="incomplete cache"):
        open_cache(tmp_path / "x.h5")
    (tmp_path / "y.h5").write_bytes(b"not hdf5")
    with pytest.raises(ExpclipError, match="y.h5: not a readable HDF5 file"):
        open_cache(tmp_path / "y.h5")
    with pytest.raises(ExpclipError, match="no such cache file"):
        open_cache(tmp_path / "z.h5")


def test_failed_rows_are_recorded_and_masked(tmp_path):
    path = tmp_path / "c.h5"
    job = Extraction(path, _items(4), {}, shard_size=2)
    assert job.register("image/k", {"model": "m"}) == [(0, 2), (2, 4)]
    job.describe("image/k", {"model": "m", "logit_scale": 1.0}, (3,), "float16")
    job.write_shard("image/k", 0, 2, np.ones((2, 3)), {})
    rows = np.ones((2, 3))
    rows[1] = np.nan
    job.write_shard("image/k", 2, 4, rows, {3: "zero-byte file"})
    assert job.finalize() == {"c0/3.png": "zero-byte file"}
    with CacheReader(path) as r:
        assert r.items().ok.tolist() == [True, True, True, False]
        assert r.failures() == {"c0/3.png": "zero-byte file"}
        assert np.isnan(r.image("k")[3]).all()


def _dataset_digests(path):
    """sha256 of every dataset's bytes and attributes in a file: equal digests = byte-equal groups."""
    found = {}
    with h5py.File(path, "r") as f:

        def note(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                raw = b"\0".join(data.tolist()) if data.dtype.kind == "O" else data.tobytes()  # strings by value
                attrs = sorted((k, str(v)) for k, v in obj.attrs.items())
                found[name] = (hashlib.sha256(raw).hexdigest(), obj.dtype.str, obj.shape, attrs)

        f.visititems(note)
    return found


def test_two_writers_of_disjoint_shards_then_one_merge_equal_one_writer(tmp_path):
    n = 7
    image = np.random.default_rng(1).normal(size=(n, 5)).astype(np.float32)
    image[4] = np.nan
    text = np.arange(6, dtype=np.float32).reshape(3, 2)
    text_attrs = {"model": "m", "prompts": ["a.", "b.", "c."], "class_index": [0, 0, 1]}
    write_arrays(
        tmp_path / "one.h5",
        _items(n),
        file_attrs={"dataset": "toy"},
        failures={4: "not an image"},
        aligned={"image/k": (image, {"model": "m"})},
        small={"text/k/s": (text, text_attrs)},
    )

    path = tmp_path / "two.h5"
    a = Extraction(path, _items(n), {"dataset": "toy"}, shard_size=2)
    assert a.register("image/k", {"model": "m"}) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    b = Extraction(path, _items(n), {"dataset": "toy"}, shard_size=5)  # the folder's shard size wins
    assert b.shard_size == 2 and b.register("image/k", {"model": "m"}) == a.missing("image/k")
    a.describe("image/k", {"model": "m"}, (5,))
    b.describe("image/k", {"model": "m"}, (5,))
    for job, shards in ((a, [(0, 2), (4, 6)]), (b, [(2, 4), (6, 7)])):
        for start, stop in shards:
            job.write_shard("image/k", start, stop, image[start:stop], {4: "not an image"} if start == 4 else {})
    assert b.register("text/k/s", {"model": "m"}, rows=3) == [(0, 3)]
    b.describe("text/k/s", text_attrs, (2,), "float32")
    b.write_shard("text/k/s", 0, 3, text)
    spec_files = sorted(p.relative_to(partial_dir(path)).as_posix() for p in partial_dir(path).rglob("*.json"))
    assert spec_files == [
        "image/k/group.json",
        "image/k/layout.json",
        "manifest.json",
        "text/k/s/group.json",
        "text/k/s/layout.json",
    ]
    assert a.unfinished() == [] and a.finalize() == {"c1/4.png": "not an image"}
    assert _dataset_digests(path) == _dataset_digests(tmp_path / "one.h5")
    assert not partial_dir(path).exists()


def test_only_dead_processes_temporaries_of_this_host_are_removed(tmp_path):
    path = tmp_path / "c.h5"
    host = socket.gethostname()
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its pid is now free: a writer killed on this host
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        shard = partial_dir(path) / "image" / "k" / "000000000-000000002.h5"
        shard.parent.mkdir(parents=True)
        dead = [tmp_path / f"c.h5.tmp-{host}-{done.pid}", shard.with_name(f"{shard.name}.tmp-{host}-{done.pid}")]
        kept = [
            tmp_path / f"c.h5.tmp-{host}-{sleeper.pid}",
            shard.with_name(f"{shard.name}.tmp-{host}-{os.getpid()}"),
            tmp_path / f"c.h5.tmp-another-host-{done.pid}",
            tmp_path / f"other.h5.tmp-{host}-{done.pid}",
        ]
        for tmp in dead + kept:
            tmp.write_bytes(b"half a file")
        Extraction(path, _items(), {})
        assert [p.exists() for p in dead] == [False, False] and all(p.exists() for p in kept)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_configuration_keys_added_later_are_not_compared(tmp_path):
    path = tmp_path / "c.h5"
    rows = np.ones((10, 4), np.float32)
    write_arrays(path, _items(), file_attrs={}, aligned={"teacher/t/paper": (rows, {"model": "T", "instruction": "x"})})
    job = Extraction(path, _items(), {})
    assert job.register("teacher/t/paper", {"model": "T", "instruction": "x", "family": "blip2-t5"}) == []
    with pytest.raises(
        ExpclipError,
        match=r"/teacher/t/paper was made by \[instruction=x, model=T\]; this run asks for \[instruction=y, model=T\]",
    ):
        job.register("teacher/t/paper", {"model": "T", "instruction": "y", "family": "blip2-t5"})
    # The same rule for a group begun in the partial folder by an older run.
    job.register("teacher/u/paper", {"model": "U"})
    later = Extraction(path, _items(), {})
    assert later.register("teacher/u/paper", {"model": "U", "family": "blip2-t5"}) == [(0, 10)]
    with pytest.raises(ExpclipError, match=r"c.h5.partial: /teacher/u/paper was made by \[model=U\]"):
        later.register("teacher/u/paper", {"model": "V", "family": "blip2-t5"})


def test_partial_folder_of_an_older_layout_or_other_items_is_a_clear_error(tmp_path):
    path = tmp_path / "c.h5"
    folder = partial_dir(path)
    folder.mkdir()
    old = {"format_version": 1, "items_digest": _items().identity(), "shard_size": 4, "groups": {}}
    (folder / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ExpclipError, match=r"c.h5.partial: an unfinished run of an older expclip .* delete the folder"):
        Extraction(path, _items(), {})
    (folder / "manifest.json").unlink()
    Extraction(path, _items(), {}).register("image/k", {"model": "m"})
    with pytest.raises(ExpclipError, match=r"c.h5.partial: an unfinished run for different items .* delete the folder"):
        Extraction(path, _items(9), {})


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from expclip.cache.format import Items
    from expclip.cache.writer import Extraction
    n = 40
    items = Items(ids=[f"i{k}" for k in range(n)], labels=np.zeros(n, dtype=np.int64), class_names=["x"])
    rows = np.arange(n * 6, dtype=np.float32).reshape(n, 6) / 7
    job = Extraction(Path(sys.argv[1]), items, {"dataset": "kill"}, shard_size=3)
    for path in ("image/k", "teacher/t/paper"):
        todo = job.register(path, {"model": path})
        if todo:
            job.describe(path, {"model": path}, (6,), "float16")
        for a, b in todo:
            time.sleep(0.01)
            job.write_shard(path, a, b, rows[a:b] * (2 if path == "image/k" else 3), {})
    job.finalize()
    """
)


def _run_writer(path, kill_when=None):
    """Run the writer script; with `kill_when(path)`, SIGKILL it as soon as that becomes true."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    if kill_when is None:
        return proc.wait(60) == 0
    deadline = time.time() + 60
    while proc.poll() is None and not kill_when(path) and time.time() < deadline:
        time.sleep(0.001)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(60) == 0


def _shards_at_least(n):
    return lambda path: len(list(partial_dir(path).glob("*/**/*.h5"))) >= n


def _merging(path):
    return bool(list(path.parent.glob(path.name + ".tmp-*")))


def _contents(path):
    with CacheReader(path) as r:
        return r.items().ids, r.image("k"), r.teacher("t", "paper"), r.image_attrs("k")["sha256"]


def test_sigkill_at_any_moment_then_rerun_equals_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["writer", str(tmp_path / "ref.h5")])
    exec(WRITER, {"__name__": "__main__"})  # the uninterrupted reference: no kill, so no process of its own
    expected = _contents(tmp_path / "ref.h5")
    path = tmp_path / "killed.h5"
    # Kill while writing the first group's shards, then, resumed, in the second group: these must land mid-run.
    for moment in (_shards_at_least(1), _shards_at_least(20)):
        assert not _run_writer(path, kill_when=moment)
        assert not path.exists() and partial_dir(path).exists()
    # Then during the merge (best effort: a fast merge may finish first): once after the last shards are written,
    # once on a merge started over a killed one's leftovers; and finally uninterrupted.
    for _ in range(2):
        if _run_writer(path, kill_when=_merging):
            break
        if path.exists():  # whatever exists at the cache path is a complete cache
            open_cache(path).close()
    if not path.exists():
        assert _run_writer(path)
    got = _contents(path)
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[2], expected[2])
    assert got[3] == expected[3]
    assert not partial_dir(path).exists()
    assert not list(tmp_path.glob("killed.h5.tmp-*"))


def test_cache_info_cli_shows_groups_and_completeness(tmp_path):
    from typer.testing import CliRunner

    from expclip.cli import app

    path = tmp_path / "c.h5"
    write_arrays(
        path,
        _items(),
        file_attrs={"dataset": "toy"},
        aligned={"image/m@t": (np.ones((10, 8), np.float32), {"model": "m", "pretrained": "t", "logit_scale": 50.0})},
    )
    result = CliRunner().invoke(app, ["cache", "info", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("complete", "True", "image/m@t", "10×8", "float16", "logit_scale=50.0", "10 (10 labelled, 0 failed)"):
        assert text in result.output
    assert "unfinished run" not in result.output
    partial_dir(path).mkdir()
    assert "unfinished run" in CliRunner().invoke(app, ["cache", "info", str(path)]).output
    (tmp_path / "bad.h5").write_bytes(b"")
    bad = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "bad.h5")])
    assert bad.exit_code == 2 and "bad.h5: not a readable HDF5 file" in bad.output


GOLDEN = Path(__file__).resolve().parent / "data" / "cache-expclip-0.1.0.h5"  # written by expclip 0.1.0 (b4c1897)


def test_a_cache_of_an_older_format_version_is_one_line_and_left_untouched(tmp_path):
    """expclip 0.1.0's real file (format_version 1, no checksums): every command says re-extract, none writes."""
    from typer.testing import CliRunner

    from expclip.cli import app

    cache = tmp_path / "golden.h5"
    cache.write_bytes(GOLDEN.read_bytes())
    with h5py.File(GOLDEN, "r") as f:
        assert f.attrs["format_version"] == 1 and "metadata_sha256" not in f.attrs  # as 0.1.0 wrote it
    line = (
        f"error: {cache}: format_version 1 is older than this expclip reads (2); re-extract it: "
        f"delete {cache} and re-run `expclip extract SOURCE --out {cache}`"
    )
    for args in (
        ["cache", "info", str(cache)],
        ["cache", "verify", str(cache)],
        ["fit-head", str(cache), "--out", str(tmp_path / "head")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.output.strip() == line, result.output
    items = Items(
        ids=[f"{c}/{i}.png" for c in ("happy", "sad") for i in range(3)],
        labels=np.array([0, 0, 0, 1, 1, 1]),
        class_names=["happy", "sad"],
    )
    with pytest.raises(ExpclipError) as refused:  # extending it too
        write_arrays(cache, items, file_attrs={}, aligned={"image/o": (np.zeros((6, 3), np.float32), {"model": "o"})})
    assert f"error: {refused.value}" == line
    assert cache.read_bytes() == GOLDEN.read_bytes() and sorted(tmp_path.iterdir()) == [cache]


def test_a_cache_of_a_newer_format_version_or_none_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    write_arrays(path, _items(), file_attrs={}, aligned={"image/k": (np.ones((10, 4), np.float32), {"model": "A"})})
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(ExpclipError) as refused:
        CacheReader(path)
    assert str(refused.value) == f"{path}: format_version 3 is newer than this expclip reads (2)"
    with h5py.File(path, "r+") as f:
        del f.attrs["format_version"]
    with pytest.raises(ExpclipError, match=r"the file's format marker is damaged \(no format_version attribute\)"):
        CacheReader(path)
