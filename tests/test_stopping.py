"""Stage one stopped from outside, for real: a SIGKILLed rank, Ctrl-C, SIGTERM and a second Ctrl-C.

Each run is a real process that receives a real signal: a child forked from the
test worker (tests/forked.py), so that it does not import torch again. Split
from test_parallel.py (same fixtures and helpers), whose torchrun and accelerate
launches then run on the other test worker.
"""

import re
import signal
import socket
import time
from pathlib import Path

import forked
import h5py
from forked import one_thread
from test_parallel import ENV, ITEMS, assert_same_cache, job, runner, shards, wait_for

from expclip.cache.format import partial_dir
from expclip.cache.lock import lock_path
from expclip.cli import app

__all__ = ["job"]  # the fixture, shared with test_parallel.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_then_a_run_with_other_process_count_resumes(job, tmp_path):
    """SIGKILL one of two ranks once shards exist; the other is stopped as torchrun's agent stops it (SIGTERM,
    then SIGKILL); one process finishes. The ranks get torchrun's environment (test_parallel.py launches the
    real torchrun)."""
    out = tmp_path / "killed.h5"
    args = [*job["args"], "--out", str(out), "--batch-size", "4", "--shard-size", "4"]
    launched = {**ENV, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = [forked.cli([*args, "--batch-size", "1", "--device", "cpu"], stdout=forked.DEVNULL,
                        stderr=forked.DEVNULL, env={**launched, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    wait_for(lambda: any(partial_dir(out).glob("teacher/**/0*.h5")), ranks[0])  # a shard done in both groups
    ranks[0].send_signal(signal.SIGSTOP)  # where it is: a fast machine would finish its shards before the SIGTERM
    ranks[1].kill()
    ranks[1].wait()
    ranks[0].send_signal(signal.SIGTERM)
    ranks[0].send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 30
    while ranks[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    ranks[0].kill()  # torchrun's agent too, once its grace period is over
    assert ranks[0].wait() != 0 and not out.exists()
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


def start(args: list[str]) -> forked.Child:
    return forked.cli(args, env=ENV)


def stopped(proc: forked.Child, out: Path, status: int) -> None:
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
    first.send_signal(signal.SIGSTOP)  # holds its lock, alive, while the others ask: a fast machine finishes
    second = runner.invoke(app, args)
    assert second.exit_code == 2, second.output
    line = second.output.strip()
    assert line.startswith(f"error: {out}: another `expclip extract` (pid {first.pid} on {socket.gethostname()} since ")
    assert "wait for it to finish" in line
    part = runner.invoke(app, [*args, "--part", "1/2"])  # a job-array task cannot join a run that merges either
    assert part.exit_code == 2 and f"pid {first.pid}" in part.output
    first.send_signal(signal.SIGTERM)  # as slurm's scancel does; handled once it runs again
    first.send_signal(signal.SIGCONT)
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


