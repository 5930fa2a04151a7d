"""What every command shares: the two consoles (results to stdout, diagnostics to stderr) and how a
user's mistake ends a command (one line, no traceback, a non-zero exit)."""

import os
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from expclip.base.errors import ExpclipError, Interrupted, PeerFailed
from expclip.cache.atomic import NO_SPACE, NOT_WRITABLE

__all__ = ["err", "escape", "out", "user_errors"]

# No emoji codes: a file named `a:x:b.csv` is printed as it is named, not with an emoji for `:x:`.
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user's mistake (or a full or read-only disk) as one line on stderr and exit 2, without a traceback."""
    try:
        yield
    except PeerFailed:  # its rank 0 printed the error
        raise typer.Exit(2) from None
    except Interrupted as e:
        err.print(f"[yellow]{escape(str(e))}[/]", highlight=False)
        raise typer.Exit(e.status) from None
    except ExpclipError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as e:  # a write that expclip.cache.atomic did not see, e.g. a folder it could not create
        if e.errno not in NO_SPACE | NOT_WRITABLE:
            raise
        err.print(f"[bold red]error:[/] {escape(str(e.filename or 'output'))}: {os.strerror(e.errno)}", highlight=False)
        raise typer.Exit(2) from None
