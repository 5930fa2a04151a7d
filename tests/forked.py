"""Child processes forked from the test worker: real processes, real signals, real exit statuses, without the
seconds of CPU a fresh interpreter spends importing torch, open_clip and transformers again.

A child resets the signal dispositions a fresh `python -m expclip` starts with, takes pipes (or /dev/null) as its
standard streams, runs its work and leaves through `os._exit`, so nothing of pytest (capture, fixtures, atexit
hooks) runs in it. The launchers (torchrun, accelerate) still start fresh interpreters: tests/test_parallel.py.
Worker threads must not hold locks the child needs: conftest gives each worker one torch and one faiss thread.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PIPE, DEVNULL = subprocess.PIPE, subprocess.DEVNULL
_living: list[Child] = []


class Child:
    """The part of `subprocess.Popen` the tests use, for a forked child running `work()`."""

    def __init__(self, work: Callable[[], int], *, env: dict | None = None, stdout: int = PIPE,
                 stderr: int = PIPE) -> None:
        pipes = {fd: os.pipe() if how == PIPE else None for fd, how in ((1, stdout), (2, stderr))}
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_child(work, env, {fd: pipe[1] if pipe else None for fd, pipe in pipes.items()})
        self.pid, self.returncode, self.args = pid, None, getattr(work, "args", work)
        for pipe in pipes.values():
            if pipe:
                os.close(pipe[1])
        self.stdout, self.stderr = (open(p[0], encoding="utf-8", errors="replace") if p else None
                                    for p in pipes.values())
        _living.append(self)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N after signal N, as Popen says
                _living.remove(self)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """The rest of each piped stream, read concurrently so that neither pipe fills up; then the exit."""
        texts: dict[int, str] = {}
        readers = [threading.Thread(target=lambda i=i, f=f: texts.__setitem__(i, f.read()), daemon=True)
                   for i, f in enumerate((self.stdout, self.stderr)) if f is not None]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()) + 5)
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        return tuple(texts.get(i) if f is not None else None for i, f in enumerate((self.stdout, self.stderr)))


def cli(args: list[str], *, env: dict | None = None, stdout: int = PIPE, stderr: int = PIPE) -> Child:
    """`expclip ARGS` in a forked child, as `python -m expclip ARGS` would run it."""

    def work() -> int:
        from expclip.cli import app

        sys.argv = ["expclip", *map(str, args)]
        app(args=list(map(str, args)), prog_name="expclip")  # standalone: ends in SystemExit
        return 0

    work.args = ["expclip", *map(str, args)]
    return Child(work, env=env, stdout=stdout, stderr=stderr)


def run(function: Callable[..., object], *args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """`function(*args)` in a forked child, its return value printed as JSON: what `subprocess.run([python, -c,
    ...], capture_output=True, text=True)` gives, so that a crash or a hang in it cannot take pytest down."""

    def work() -> int:
        print(json.dumps(function(*args)))
        return 0

    work.args = [function.__name__]
    child = Child(work)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise
    return subprocess.CompletedProcess(work.args, child.returncode, stdout, stderr)


def reap() -> None:
    """Kill and wait for children a failed test left running."""
    for child in list(_living):
        child.kill()
        child.wait()


@contextmanager
def one_thread() -> Iterator[None]:
    """In-process runs computing as a forked child or a torchrun rank does: float32 sums depend on the thread count,
    and tests compare the caches they write byte for byte."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread() -> None:
    """OpenMP's thread pool does not survive a fork: a child computing with more threads waits for it forever.
    Tests compare what children write with references computed under one thread as well."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(1)


def _become_child(work: Callable[[], int], env: dict | None, streams: dict[int, int | None]) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        for fd, target in streams.items():
            os.dup2(null if target is None else target, fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a fresh interpreter's dispositions
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        _one_thread()
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        code = work()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
