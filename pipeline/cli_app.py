"""What the `expclip` app owns besides its commands: their order in --help, and the options that every command
shares, given before it (`expclip --quiet extract ...`, `expclip --log-every 10 run ...`)."""

import math
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from expclip.base.errors import ExpclipError
from expclip.base.version import __version__
from expclip.console import out, user_errors
from expclip.stages.shared import progress

# The order people use them in: stage one, stage two, the paper's run, then the tools around the cache.
ORDER = ("extract", "fit-head", "evaluate", "ablate", "run", "predict", "search", "audit", "cache", "head", "demo")
LOG_EVERY_ENV = "EXPCLIP_LOG_EVERY"  # for batch scripts, where the option would repeat on every command line


class InUseOrder(TyperGroup):
    """Commands listed in ORDER, whichever order they were registered in (a command not in it comes last)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def _version(asked: bool) -> None:
    """Eager: `expclip --version` answers without a command and before any other option is checked."""
    if asked:
        out.print(f"expclip {__version__}", markup=False, highlight=False)
        raise typer.Exit()


def shared_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_every: Annotated[
        float, typer.Option(min=0.0, envvar=LOG_EVERY_ENV, help="Seconds between plain progress lines (done/total, "
        "rate, ETA) when stderr is not a terminal, as in a batch job's log; 0: every step. A terminal shows a "
        "bar.")] = progress.LOG_EVERY,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or lines; results and errors still "
                                        "print.")] = False,
) -> None:
    """Store the shared options where the progress code reads them, before the command runs."""
    with user_errors():
        if not math.isfinite(log_every):  # typer refuses nan and negatives, not inf
            raise ExpclipError(f"--log-every {log_every} (or {LOG_EVERY_ENV}): a finite number of seconds, 0 or more")
    progress.settings = progress.Settings(every=log_every, quiet=quiet)
