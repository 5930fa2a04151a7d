"""`python -m expclip` runs the same typer app as the `expclip` console script."""

from expclip.cli import app

app()
