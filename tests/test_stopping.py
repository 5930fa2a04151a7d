"""Stage one stopped from outside, for real: a SIGKILLed torchrun rank, Ctrl-C, SIGTERM and a second Ctrl-C.

Split from test_parallel.py (same fixtures and helpers) so that the two files'
real-process launches run on different test workers.
"""

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import psutil
from test_parallel import ENV, ITEMS, assert_same_cache, job, one_thread, runner, shards, torchrun, wait_for

from expclip.cache.format import partial_dir
from expclip.cache.lock import lock_path
from expclip.cli import app

__all__ = ["job"]  # the fixture, shared with test_parallel.py


def test_a_killed_rank_then_a_run_with_other_process_count_resumes(job, tmp_path):
    """SIGKILL one of two torchrun ranks once shards exist; torchrun stops the other; one process finishes."""
    out = tmp_path / "killed.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    proc = torchrun(2, [*args, "--batch-size", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(partial_dir(out).glob("teacher/**/0*.h5")), proc)  # a shard done in both groups
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    workers[1].kill()
    assert proc.wait(timeout=120) != 0 and not out.exists()
    done = len(shards(out))
    assert 1 <= done < 5
    with one_thread():
        resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    encoded, earlier = map(
        int, re.search(rf"\({ITEMS} items: (\d+) encoded, (\d+) encoded earlier\)", resumed.output).groups()
    )
    assert encoded + earlier == ITEMS and earlier > 0  # kept shards reused
    assert_same_cache(job["reference"], out)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "expclip", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stopped(proc: subprocess.Popen, out: Path, status: int) -> None:
    """The run ended with `status` and one line, keeping only complete shard files, lock released."""
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert "interrupted: re-run the same command to resume" in stderr and "Traceback" not in stderr
    kept = shards(out)
    assert kept and not out.exists() and not lock_path(out).exists()
    for shard in kept:
        with h5py.File(shard, "r") as f:
            assert f["rows"].shape[0] == 4 or shard.name.endswith("000000016-000000018.h5")


def test_ctrl_c_stops_at_a_batch_boundary_and_the_rerun_resumes(job, tmp_path):
    out = tmp_path / "stopped.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    proc = start([*args, "--batch-size", "1"])
    wait_for(lambda: len(shards(out)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    stopped(proc, out, 130)
    with one_thread():
        resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert_same_cache(job["reference"], out)


def test_a_second_run_refuses_naming_the_first_which_sigterm_stops(job, tmp_path):
    out = tmp_path / "busy.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    first = start([*args, "--batch-size", "1"])
    wait_for(lambda: len(shards(out)) >= 1, first)
    second = runner.invoke(app, args)
    assert second.exit_code == 2, second.output
    line = second.output.strip()
    assert line.startswith(f"error: {out}: another `expclip extract` (pid {first.pid} on {socket.gethostname()} since ")
    assert "wait for it to finish" in line
    part = runner.invoke(app, [*args, "--part", "1/2"])  # a job-array task cannot join a run that merges either
    assert part.exit_code == 2 and f"pid {first.pid}" in part.output
    first.send_signal(signal.SIGTERM)  # as slurm's scancel does
    stopped(first, out, 143)
    with one_thread():
        assert runner.invoke(app, args).exit_code == 0
    assert_same_cache(job["reference"], out)


def test_a_second_ctrl_c_stops_at_once_without_a_corrupt_shard(job, tmp_path):
    out = tmp_path / "twice.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    proc = start(args)
    wait_for(lock_path(out).exists, proc)
    proc.send_signal(signal.SIGINT)
    said = []
    for line in proc.stderr:  # the second once the first is acknowledged: two at once would be handled as one
        said.append(line)
        if "stopping after the current batch" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(said) + rest
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopping now" in stderr
    for shard in shards(out):
        with h5py.File(shard, "r") as f:
            assert f["rows"].shape[0] in (2, 4)
    with one_thread():
        assert runner.invoke(app, args).exit_code == 0
    assert_same_cache(job["reference"], out)


