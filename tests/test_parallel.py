"""Stage one with several processes: torchrun ranks, `--part K/N` job arrays, the cache lock, and signals.

Every run here is real: torchrun starts real processes (gloo on the CPU), the
signals are real, and each resulting cache is compared with one written by a
single process, every group's data sha256 included. Features are
byte-identical only between runs that compute with the same number of threads
(float32 sums depend on it), and torchrun gives each rank one thread, so the
reference is computed with one thread as well.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from forked import one_thread
from typer.testing import CliRunner

from expclip.cache.format import partial_dir
from expclip.cache.lock import CacheLock, lock_path
from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import write_faces

runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
ITEMS = 18  # 3 classes x 6 faces


@pytest.fixture(scope="module")
def job(tiny_clip, tiny_blip2, tmp_path_factory) -> dict:
    """The faces, the options every run here shares, and the single-process reference cache."""
    folder = tmp_path_factory.mktemp("parallel")
    write_faces(folder / "faces", ["happy", "sad", "Anger"], 6, size=24)
    args = ["extract", str(folder / "faces"), "--clip-model", tiny_clip, "--teacher", str(tiny_blip2),
            "--num-workers", "0"]
    reference = folder / "reference.h5"
    with one_thread():
        done = runner.invoke(app, [*args, "--out", str(reference), "--batch-size", "4", "--shard-size", "4"])
    assert done.exit_code == 0, done.output
    return {"args": args, "reference": reference, "folder": folder}


def assert_same_cache(a: Path, b: Path) -> None:
    """Items, failures, and every group's attributes (its data sha256 included) and shape."""
    with CacheReader(a) as x, CacheReader(b) as y:
        assert x.items().same_rows(y.items()) and (x.items().ok == y.items().ok).all()
        assert x.failures() == y.failures() and x.group_paths() == y.group_paths()
        for path in x.group_paths():
            assert x.group_attrs(path) == y.group_attrs(path), path
            assert x.group_shape(path) == y.group_shape(path), path
    assert not partial_dir(b).exists() and not lock_path(b).exists()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node={n}"]
# accelerate's GPU launcher starts CPU processes too when the command says --device cpu (accelerate 1.15)
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes={n}",
              "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]


def torchrun(nproc: int, args: list[str], launcher: list[str] = TORCHRUN, **popen) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node N -m expclip ...` (or another launcher) in a child process."""
    return subprocess.Popen([*(a.format(n=nproc) for a in launcher), "-m", "expclip", *args, "--device", "cpu"],
                            env=ENV, text=True, **popen)


def shards(out: Path) -> list[Path]:
    return sorted(partial_dir(out).glob("image/**/0*.h5"))


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the test could act"


@pytest.mark.parametrize("launcher", [TORCHRUN, ACCELERATE], ids=["torchrun", "accelerate-launch"])
def test_two_ranks_write_the_single_process_cache(job, tmp_path, launcher):
    out = tmp_path / "two.h5"
    proc = torchrun(2, [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"], launcher,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert stdout.count("wrote") == 1 and f"({ITEMS} items: {ITEMS} encoded)\n" in stdout  # rank 0 reports all
    assert "Traceback" not in stderr
    assert_same_cache(job["reference"], out)


def test_parts_then_a_plain_run_merge_to_the_single_process_cache(job, tmp_path):
    out = tmp_path / "parts.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    with one_thread():
        first = runner.invoke(app, [*args, "--part", "1/2"])
        assert first.exit_code == 0, first.output
        assert f"part 1/2 of {out}: 10 items encoded" in first.output  # shards 0, 2, 4 of [0,4) .. [16,18)
        assert not out.exists() and len(shards(out)) == 3
        second = runner.invoke(app, [*args, "--part", "2/2"])
        assert second.exit_code == 0 and "part 2/2" in second.output and ": 8 items encoded" in second.output
        merged = runner.invoke(app, args)
    assert merged.exit_code == 0, merged.output
    assert (
        f"wrote {out} ({ITEMS} items: 0 encoded, {ITEMS} encoded earlier; merged the shards of an earlier run)\n"
        in merged.output
    )
    assert_same_cache(job["reference"], out)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b"])
def test_a_bad_part_is_one_line(job, tmp_path, bad):
    result = runner.invoke(app, [*job["args"], "--out", str(tmp_path / "x.h5"), "--part", bad])
    assert result.exit_code == 2 and f"--part {bad!r}: write K/N with 1 <= K <= N" in result.output


def test_a_missing_part_is_encoded_by_the_merging_run(job, tmp_path):
    out = tmp_path / "one-part.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    with one_thread():
        part = runner.invoke(app, [*args, "--part", "2/3"])
        assert part.exit_code == 0 and ": 6 items encoded" in part.output  # shards [4, 8) and [16, 18)
        merged = runner.invoke(app, args)
    assert merged.exit_code == 0 and f"({ITEMS} items: 12 encoded, 6 encoded earlier)\n" in merged.output
    assert_same_cache(job["reference"], out)


def test_parts_share_the_cache_and_a_merging_run_waits_for_them(job, tmp_path):
    out = tmp_path / "shared.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    with CacheLock(out, shared=True):  # a --part task of another process still running
        with one_thread():
            part = runner.invoke(app, [*args, "--part", "2/2"])
        assert part.exit_code == 0, part.output
        merging = runner.invoke(app, args)
        assert merging.exit_code == 2
        assert f"`expclip extract --part` runs (pid {os.getpid()} on {socket.gethostname()}" in merging.output
        assert "then run without --part to merge" in merging.output
    with one_thread():
        assert runner.invoke(app, args).exit_code == 0
    assert_same_cache(job["reference"], out)


def test_the_only_writer_removes_dead_temporaries_of_every_host(job, tmp_path):
    """Temporary files of another host cannot be checked from here, so only a run holding the exclusive
    lock (no writer alive anywhere) removes them; a --part run leaves them."""
    out = tmp_path / "leftovers.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    with one_thread():
        assert runner.invoke(app, [*args, "--part", "1/2"]).exit_code == 0
        stale = [shards(out)[0].with_name("000000004-000000008.h5.tmp-another-host-1"),
                 out.with_name(out.name + ".tmp-another-host-2")]
        for f in stale:
            f.write_bytes(b"half")
        assert runner.invoke(app, [*args, "--part", "2/2"]).exit_code == 0
        assert all(f.exists() for f in stale)
        assert runner.invoke(app, args).exit_code == 0
    assert not any(f.exists() for f in stale)
    assert_same_cache(job["reference"], out)


@pytest.mark.parametrize(
    "cores, ranks, workers", [(16, "1", 8), (16, "4", 4), (16, "8", 2), (2, "4", 1), (64, None, 8)]
)
def test_decode_workers_default_shares_the_cores_among_this_machines_ranks(monkeypatch, cores, ranks, workers):
    from expclip.stages.extract.config import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert default_workers() == workers


def test_a_filesystem_without_locks_is_said_and_the_run_goes_on(job, tmp_path, monkeypatch):
    import errno

    from expclip.cache import lock

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    out = tmp_path / "nolock.h5"
    with one_thread():
        result = runner.invoke(app, [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"])
    assert result.exit_code == 0, result.output
    assert (
        f"note: {tmp_path} does not support file locks: nothing stops another run on this cache at the same time"
        in result.output
    )
    assert_same_cache(job["reference"], out)
