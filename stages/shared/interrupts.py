"""Ctrl-C and SIGTERM as a request to stop at the next safe point; a second one stops at once.

Long loops call `stop.check()` where stopping loses nothing finished (between
batches and between the encoder passes of a batch: every finished shard is
already a complete file); it raises
`Interrupted`, which the CLI prints as one line and turns into exit status 130
(SIGINT) or 143 (SIGTERM). A second signal ends the process at once with the
same status: files are only ever published by an atomic rename, so this
leaves at most a temporary file, which the next run removes. DataLoader workers
ignore the signals but read `requested()` (shared memory) between the frames
they decode, so a batch of long clips is cut short instead of decoded to the end.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from expclip.base.errors import Interrupted
from expclip.stages.shared.progress import stderr

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the signal handler; read by the loop at its safe points."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._shared = multiprocessing.RawValue("i", 0)  # the signal number, for worker processes

    def request(self, signum: int) -> None:
        """What the handler does: a plain memory write, safe in a signal handler."""
        self.signum = signum
        self._shared.value = signum

    def requested(self) -> bool:
        """Whether a stop was asked for; also true in the DataLoader workers this object was handed to."""
        return self._shared.value != 0

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM while the block runs (only the main thread can; elsewhere nothing is caught)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: object) -> None:
        if stop.signum is not None:
            stderr.print("interrupted again: stopping now; finished shards are kept, re-run the same command to resume")
            sys.stderr.flush()
            os._exit(128 + signum)
        stop.request(signum)
        stderr.print("stopping after the current batch (press Ctrl-C again to stop at once)")

    before = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def ignore_in_worker(_: int = 0) -> None:
    """DataLoader `worker_init_fn`: workers leave signals to the main process, which stops them itself."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
