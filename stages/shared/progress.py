"""One rich progress bar style for long work: done/total, items/s and ETA, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr = Console(stderr=True, emoji=False)  # as the CLI's consoles: paths print as named (`:x:` stays text)


class RateColumn(ProgressColumn):
    """Items per second, named after what is counted (faces/s, configs/s)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("--" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


def progress(unit: str = "items", shown: bool = True) -> Progress:
    """A progress bar on stderr; use as a context manager and `add_task(desc, total=n)`."""
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
