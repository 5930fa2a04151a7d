"""Progress of long work on stderr: rich's bar on a terminal; in a batch job's log (slurm, nohup, `| tee`), where
a bar shows nothing until the end, one plain line every `--log-every` seconds and the same final summary."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr = Console(stderr=True, emoji=False)  # as the CLI's consoles: paths print as named (`:x:` stays text)
LOG_EVERY = 30.0  # seconds between plain lines: a stalled job shows within a minute, an hour's log is 120 lines
clock = time.monotonic  # the plain lines' clock (tests move it)


@dataclass
class Settings:
    """How progress is shown; the CLI sets it once per command from `expclip --log-every/--quiet`."""

    every: float = LOG_EVERY
    quiet: bool = False


settings = Settings()


def launched_rank() -> int:
    """This process's rank in a torchrun / `accelerate launch` job (their RANK and WORLD_SIZE), 0 alone."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


class RateColumn(ProgressColumn):
    """Items per second, named after what is counted (faces/s, configs/s)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("--" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


def progress(unit: str = "items", shown: bool = True) -> Progress:
    """Progress on stderr; use as a context manager and `add_task(desc, total=n)`. Nothing when not `shown`,
    under --quiet or on a launched job's rank other than 0 (rank 0 reports for the job)."""
    shown = shown and not settings.quiet and launched_rank() == 0
    if shown and not stderr.is_terminal:
        return LogLines(unit, settings.every)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        disable=not shown,
    )


class LogLines(Progress):
    """The bar's numbers as plain lines: `desc: done/total unit (pct), rate, elapsed, ETA` at most once per
    `every` seconds per task, and a last line per task when the work ends without an error (the error is the
    last word otherwise)."""

    def __init__(self, unit: str, every: float):
        super().__init__(console=stderr, disable=True)  # rich still counts; no live display
        self.unit, self.every = unit, every
        self.began: dict[TaskID, tuple[float, float]] = {}  # task -> (clock, completed) when it was added
        self.said: dict[TaskID, float] = {}

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        now = clock()
        self.began[task], self.said[task] = (now, self._tasks[task].completed), now
        return task

    def update(self, task_id: TaskID, **changes) -> None:
        super().update(task_id, **changes)
        moved = changes.get("advance") is not None or changes.get("completed") is not None  # not a new description
        if moved and clock() - self.said[task_id] >= self.every:
            self._say(task_id, final=False)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        super().__exit__(exc_type, exc_val, exc_tb)
        if exc_type is None:
            for task in self.began:
                self._say(task, final=True)

    def _say(self, task_id: TaskID, final: bool) -> None:
        now, task = clock(), self._tasks[task_id]
        self.said[task_id] = now
        started, at_start = self.began[task_id]
        elapsed = now - started
        rate = (task.completed - at_start) / elapsed if elapsed > 0 else None
        parts = [f"{task.description}: {task.completed:.0f}" + ("" if task.total is None else f"/{task.total:.0f}")
                 + f" {self.unit}" + (f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""),
                 "--" if rate is None else f"{rate:,.1f} {self.unit}/s", f"elapsed {_clock_time(elapsed)}"]
        if final:
            parts.append("done")
        elif task.total is not None:
            parts.append("ETA " + (_clock_time((task.total - task.completed) / rate) if rate else "--"))
        stderr.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


def _clock_time(seconds: float) -> str:
    """H:MM:SS, as the bar's elapsed and remaining columns."""
    return str(timedelta(seconds=round(seconds)))
