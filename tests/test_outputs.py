"""Outputs under real conditions: a read-only folder and a full filesystem.

The folders are tests/mounts.py's: tmpfs mounts for root, a mode-555 folder
for anyone else (who skips the full-disk tests).

Every output option is checked before any work (one line, exit 2); a write
refused later is one line too; a full disk is one line naming the file, the
space needed and free, with no temporary file left and the finished shards
kept; HDF5 meeting a full disk never crashes the process (checked in a fresh
process, where a segfault shows as exit status 139 / -11).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import KEY, clip_attrs
from mounts import REFUSED, disk, lockable, read_only
from safetensors.torch import save_file
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import atomic, fulldisk
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.output_paths import writable
from expclip.stages.fit_head import FitConfig
from expclip.stages.fit_head import train as fit_train
from expclip.stages.shared import protocol

__all__ = ["disk", "lockable", "read_only"]  # mounts.py's fixtures, used by name
runner = CliRunner()
CLIP = clip_attrs(embed_dim=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_clip):
    """A training cache, an evaluation cache, a head and 9 faces (tiny, synthetic)."""
    folder = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    n = 32
    items = fmt.Items(ids=[f"t{i}" for i in range(n)], labels=np.full(n, -1), class_names=[])
    teacher = {
        fmt.teacher_path("tiny-t5", "paper"): (
            rng.standard_normal((n, 12)).astype(np.float32),
            {"model": "t5", "instruction": "paper"},
        )
    }
    train = folder / "train.h5"
    write_arrays(train, items, file_attrs={"dataset": "train"},
                 aligned={fmt.image_path(KEY): (rng.standard_normal((n, 8)).astype(np.float32), CLIP), **teacher})
    order = protocol.class_order()
    eval_items = fmt.Items(ids=[f"e{i}" for i in range(20)], labels=rng.integers(0, 3, 20), class_names=order[:3])
    text = {
        fmt.text_path(KEY, "class_name"): (
            rng.standard_normal((11, 8)).astype(np.float32),
            {"prompts": [c.lower() + "." for c in order], "class_names": order, "class_index": list(range(11))},
        )
    }
    evals = folder / "eval.h5"
    write_arrays(evals, eval_items, file_attrs={"dataset": "toy-eval"},
                 aligned={fmt.image_path(KEY): (rng.standard_normal((20, 8)).astype(np.float32), CLIP)}, small=text)
    head = folder / "head"
    fit_train.fit_head([train], head, FitConfig(epochs=1, batch_size=16, device="cpu"))
    faces = folder / "faces"
    write_faces(faces, ["happy", "sad", "Anger"], 3, size=40)
    return {"train": train, "eval": evals, "head": head, "faces": faces, "clip": tiny_clip}


def _error_line(result) -> str:
    """The run's one error line (and nothing like a traceback)."""
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(f"*{atomic.TMP}*"))


def _commands(d: dict, ro: Path) -> dict[str, list[str]]:
    evaluate = ["evaluate", "--baseline", "--cache", str(d["eval"])]
    return {
        "extract --out": ["extract", str(d["faces"]), "--out", str(ro / "c.h5")],
        "extract --out in a folder to create": ["extract", str(d["faces"]), "--out", str(ro / "new" / "c.h5")],
        "fit-head --out": ["fit-head", str(d["train"]), "--out", str(ro / "head"), "--device", "cpu"],
        "evaluate --json": [*evaluate, "--json", str(ro / "r.json")],
        "evaluate --csv": [*evaluate, "--csv", str(ro / "r.csv")],
        "evaluate --out-dir": [*evaluate, "--out-dir", str(ro / "png")],
        "head export --out": ["head", "export", str(d["head"]), "--out", str(ro / "head.pth")],
        "ablate --out-dir": [
            "ablate",
            str(d["train"]),
            "--eval",
            str(d["eval"]),
            "--grid",
            "epochs=1",
            "--out-dir",
            str(ro / "grid"),
        ],
        "demo --workdir": ["demo", "--workdir", str(ro / "demo")],
    }


@pytest.mark.parametrize(
    "command", list(_commands({k: Path(k) for k in ("eval", "faces", "train", "head")}, Path("ro")))
)
def test_an_unwritable_output_is_refused_before_any_work(command, data, read_only, monkeypatch):
    import expclip.ablate
    import expclip.demo.walkthrough  # noqa: F401 - imported before any patch: they bind functions on import

    def work(*args, **kwargs):
        raise AssertionError("work began before the output was checked")

    for target in ("expclip.stages.extract.sources.resolve", "expclip.stages.fit_head.train.fit_head",
                   "expclip.stages.evaluate.evaluate", "expclip.stages.shared.heads.load_head",
                   "expclip.ablate.run_grid", "expclip.demo.walkthrough.run_demo"):
        monkeypatch.setattr(target, work)  # fit-head never trains, evaluate never scores
    result = runner.invoke(app, _commands(data, read_only)[command])
    assert result.exit_code == 2, result.output
    line = _error_line(result)
    assert line.startswith(f"error: {command.split(' in ')[0].split()[-1]} {read_only}") and line.endswith(
        tuple(f"({r})" for r in REFUSED)
    )
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_writable_creates_what_the_command_would_and_names_the_option(tmp_path):
    assert writable(tmp_path / "a" / "b" / "c.h5", "--out") == tmp_path / "a" / "b" / "c.h5"
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())  # the probe is gone
    with pytest.raises(ExpclipError, match=r"^--json .*r\.json: folder .*missing does not exist$"):
        writable(tmp_path / "missing" / "r.json", "--json", create=False)
    with pytest.raises(ExpclipError, match=r"^--out .*a: is a folder; give a file name$"):
        writable(tmp_path / "a", "--out")
    (tmp_path / "f").write_text("")
    with pytest.raises(ExpclipError, match=r"^--out-dir .*f: is a file, not a folder$"):
        writable(tmp_path / "f", "--out-dir", folder=True)


def test_a_write_refused_after_the_check_is_one_line(data, lockable, monkeypatch):
    """The folder turns read-only while fit-head trains: the write says so in one line, no traceback."""
    out, lock = lockable
    real_fit = fit_train.fit_head

    def fit_then_lock(*args, **kwargs):
        lock()
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fit_train, "fit_head", fit_then_lock)
    result = runner.invoke(
        app,
        [
            "fit-head",
            str(data["train"]),
            "--out",
            str(out / "head"),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--batch-size",
            "16",
        ],
    )
    assert result.exit_code == 2, result.output
    assert _error_line(result) in {f"error: {out / 'head.safetensors'}: cannot write ({r})" for r in REFUSED}
    refused = "|".join(REFUSED)
    with pytest.raises(ExpclipError, match=rf"manifest\.json: cannot write \(({refused})\)$"):
        atomic.create_exclusively(out / "manifest.json", lambda tmp: tmp.write_text("{}"))
    with pytest.raises(ExpclipError, match=rf"c\.h5\.lock: cannot write \(({refused})\)$"):
        write_arrays(out / "c.h5", fmt.Items(ids=["a"], labels=np.zeros(1, dtype=np.int64), class_names=["x"]),
                     file_attrs={}, aligned={fmt.image_path(KEY): (np.zeros((1, 8), np.float32), CLIP)})
    assert not any(out.iterdir())


def test_a_full_disk_is_one_line_and_the_old_file_stays(disk):
    """Plain files, safetensors and torch.save (which says only 'unexpected pos') all become DiskFull."""
    full = disk("size=64k").path
    (full / "r.json").write_text("finished")
    writers = {
        "r.json": lambda tmp: tmp.write_bytes(b"x" * 200_000),
        "h.safetensors": lambda tmp: save_file({"w": torch.ones(50_000)}, str(tmp)),
        "h.pth": lambda tmp: torch.save({"mlp.weight": torch.ones(50_000)}, tmp),
    }
    for name, write in writers.items():
        with pytest.raises(
            atomic.DiskFull,
            match=rf"{name}: no space left on the device \((needs more than the .* written, )?[\d.]+ (B|KiB) free\)$",
        ):
            atomic.write_atomically(full / name, write)
    assert [p.name for p in full.iterdir()] == ["r.json"] and (full / "r.json").read_text() == "finished"
    with pytest.raises(
        atomic.DiskFull, match=r"big\.h5: no space left on the device \(needs about 1\.0 MiB, .* free\)"
    ):
        atomic.require_space(full / "big.h5", 1 << 20)


CHILD = """
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import typer

import expclip.cache.partial, expclip.cache.writer
# The space checks passed, then another process filled the disk: HDF5 itself meets ENOSPC.
expclip.cache.partial.require_space = expclip.cache.writer.require_space = lambda *a, **k: None
from expclip.cache import format as fmt
from expclip.cache.writer import Extraction
from expclip.cli import user_errors

n, width = 64, 1024
items = fmt.Items(ids=[f"face{i}" for i in range(n)], labels=np.zeros(n, dtype=np.int64), class_names=["a"])
rows = np.random.default_rng(0).standard_normal((n, width)).astype(np.float32)
try:
    with user_errors():
        job = Extraction(Path(sys.argv[1]), items, {"dataset": "toy"}, shard_size=16)
        for group in ("image/a", "image/b"):
            todo = job.register(group, {"model": group})
            job.describe(group, {"model": group}, (width,), "float16")
            for start, stop in todo:
                job.write_shard(group, start, stop, rows[start:stop])
        job.finalize()
except typer.Exit as e:
    sys.exit(e.exit_code)
print("merged")
"""


def _child(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(cache)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("size, where", [("140k", "shards"), ("400k", "merge")])
def test_hdf5_on_a_full_disk_exits_2_without_a_segfault(disk, size, where):
    """A fresh process writes 8 shards and merges them; HDF5 fails in a shard or in the merge (and in its close)."""
    d = disk(f"size={size}")
    cache = d.path / "c.h5"
    done = _child(cache)
    assert done.returncode == 2, f"exit {done.returncode} (139 or -11: segfault)\n{done.stderr}"
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    shards = sorted(fmt.partial_dir(cache).rglob("*.h5"))
    assert not _temporaries(d.path) and not cache.exists()
    if where == "shards":
        assert (
            f"{fmt.partial_dir(cache)}/image/" in done.stderr
            and "no space left on the device (needs about" in done.stderr
        )
        assert 1 <= len(shards) < 8
    else:
        assert done.stderr.startswith(f"error: {cache}: no space left on the device (needs about")
        assert "are kept" in done.stderr and len(shards) == 8
    d.remount("size=2m")
    again = _child(cache)
    assert again.returncode == 0 and again.stdout == "merged\n", again.stderr
    with CacheReader(cache) as r:
        assert len(r.items()) == 64 and not fmt.partial_dir(cache).exists()


def test_extract_on_a_full_disk_keeps_its_shards_and_a_rerun_merges(data, disk):
    """Shards stop at a full disk, the merge is refused with the numbers, and a re-run with room merges."""
    d = disk("size=128k")
    out = d.path / "c.h5"
    args = ["extract", str(data["faces"]), "--out", str(out), "--clip-model", data["clip"], "--no-teacher",
            "--num-workers", "0", "--batch-size", "4", "--shard-size", "4"]
    first = runner.invoke(app, args)
    assert first.exit_code == 2, first.output
    line = _error_line(first)
    assert (
        f"{fmt.partial_dir(out)}/" in line and "no space left on the device (needs about" in line and "are kept" in line
    )
    kept = sorted(fmt.partial_dir(out).rglob("*.h5"))
    assert kept and not _temporaries(d.path)

    d.remount("size=320k")  # room for every shard, not for the merge beside them
    second = runner.invoke(app, args)
    assert second.exit_code == 2, second.output
    assert _error_line(second).startswith(f"error: {out}: no space left on the device (needs about")
    assert set(kept) <= set(fmt.partial_dir(out).rglob("*.h5")) and not _temporaries(d.path) and not out.exists()

    d.remount("size=4m")
    third = runner.invoke(app, args)
    assert third.exit_code == 0, third.output
    assert f"wrote {out} (9 items: 0 encoded, 9 encoded earlier; merged the shards of an earlier run)" in third.output
    assert "already complete" not in third.output and not fmt.partial_dir(out).exists()
    with CacheReader(out) as r:
        assert r.items().ok.all() and len(r.items()) == 9
    assert "already complete, nothing to encode" in runner.invoke(app, args).output
    assert not fulldisk.hdf5_disarmed()  # the space checks kept HDF5 from ever meeting the full disk here


def test_extract_refuses_before_encoding_when_the_disk_clearly_lacks_the_space(data, disk, tmp_path):
    """Features 2,048 wide: 9 faces (float16) and 198 prompts (float32) are 1.6 MiB; with the merged copy
    3.2 MiB. On 2 MB the shards alone would fit and only the merge would fail, after all the encoding:
    the estimate refuses at once, and a disk with room finishes the same command."""
    from expclip.demo.checkpoints import save_tiny_clip, tiny_clip_cfg

    wide = save_tiny_clip(tmp_path / "wide-clip", model_cfg={**tiny_clip_cfg(32), "embed_dim": 2048})
    d = disk("size=2m")
    out = d.path / "c.h5"
    args = ["extract", str(data["faces"]), "--out", str(out), "--clip-model", wide, "--no-teacher",
            "--num-workers", "0", "--batch-size", "4", "--shard-size", "4"]
    first = runner.invoke(app, args)
    assert first.exit_code == 2, first.output
    line = _error_line(first)
    new = 9 * 2048 * 2 + 198 * 2048 * 4  # image rows, prompt rows: 1.58 MiB; twice, plus /items, ~3.2 MiB
    assert line.startswith(
        f"error: {fmt.partial_dir(out)}: no space left on the device (needs about "
        f"{2 * new / 2**20:.1f} MiB, 2.0 MiB free), estimated for 9 rows of features as float16 "
        "and the prompts, then the merged cache beside the old one; free space or choose another --out"
    )
    assert not list(fmt.partial_dir(out).rglob("*.h5")) and not _temporaries(d.path)  # nothing encoded

    d.remount("size=8m")
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    with CacheReader(out) as r:
        assert r.items().ok.all() and r.image_attrs(r.image_keys()[0])["embed_dim"] == 2048


def test_the_hdf5_guard_collects_only_full_disk_errors_and_restores_the_hooks(monkeypatch, tmp_path):
    """What h5py can only print: a full disk is collected (and h5py disarmed), anything else reaches the old hook."""
    disarmed, seen = [], []
    monkeypatch.setattr(fulldisk, "disarm", lambda: disarmed.append(True))
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    before = sys.unraisablehook, sys.excepthook
    full, other = OSError(28, "No space left on device"), ValueError("something else")
    with fulldisk.hdf5_guard(lambda e: e is full) as ignored:
        for error in (full, other):
            sys.unraisablehook(SimpleNamespace(exc_value=error))
    assert ignored == [full] and [u.exc_value for u in seen] == [other] and disarmed == [True]
    assert (sys.unraisablehook, sys.excepthook) == before
    hdf5, plain = tmp_path / "a.h5", tmp_path / "a.txt"
    hdf5.write_bytes(fulldisk.HDF5_SIGNATURE + b"\0" * 100)
    plain.write_bytes(b"x" * 100)
    fulldisk.release(hdf5)
    fulldisk.release(plain)
    assert hdf5.stat().st_size == 0 and plain.stat().st_size == 100 and disarmed == [True, True]
