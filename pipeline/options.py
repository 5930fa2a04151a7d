"""Typer options built from a stage's config fields, so each default, help line and choice list is stated once.

`options(FitConfig).lr` is `Annotated[float, typer.Option(help=...)]`, with
`Literal[choices]` as the type where the field declares choices, so typer lists
them in --help; the parameter's default is the dataclass's own (`= FitConfig.lr`).
`configured(Config)` turns a function `f(config, **rest)` into a typer command
whose options are Config's fields plus f's other parameters: the command parses,
builds the config and dispatches (as clip_benchmark's CLI does). A choice is
checked once, by the config's own rule (`base.settings.value_problem`), which
its `check()` applies for API callers too. A field declared with `parse` (a comma list, a number or a word)
is a text option (its default written as text) that `configured` reads with it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Callable, Literal, Optional

import typer

from expclip.base.settings import value_problem
from expclip.console import user_errors
from expclip.stages.shared.common_settings import CacheGroups

# Typer arguments that name the option or make it positional: not typer.Option keywords.
_DECLS, _ARGUMENT = "decls", "argument"


def _field(config: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config)}[name]


def choice(values: tuple[str, ...]) -> Any:
    """A type typer offers as a fixed set of values (--help shows them as <a|b>)."""
    return Literal[values]


def _checked(config: type, name: str) -> Callable[[Any], Any]:
    """A typer callback applying the config's own rule for one field, so the CLI refuses what check() would."""

    def callback(value: Any) -> Any:
        problem = value_problem(_field(config, name), value)
        if problem:
            raise typer.BadParameter(problem)
        return value

    return callback


def _annotation(config: type, field: dataclasses.Field, kind: Any, extra: dict[str, Any]) -> Any:
    extra = dict(extra)
    decls = extra.pop(_DECLS, ())
    if extra.pop(_ARGUMENT, False):
        return Annotated[kind, typer.Argument(help=field.metadata["help"], **extra)]
    choices = field.metadata.get("choices")
    if choices:  # typer's own Literal check would state the rule a second time: the config's rule runs instead
        extra = {"metavar": "<" + "|".join(choices) + ">", "callback": _checked(config, field.name), **extra}
    return Annotated[kind, typer.Option(*decls, help=field.metadata["help"], **extra)]


def options(config: type, **extra: dict[str, Any]) -> SimpleNamespace:
    """One CLI annotation per field of `config`: its type with its help (choices listed and checked).

    `extra` adds typer.Option arguments per field, e.g. `batch_size={"min": 1}`;
    `decls=("--json",)` names the option, `argument=True` makes it positional.
    """
    hints = typing.get_type_hints(config)
    found = {}
    for field in dataclasses.fields(config):
        if field.metadata.get("parse"):
            kind = Optional[str]  # the command line's text, which configured() reads with the field's parse
        else:
            kind = str if field.metadata.get("choices") else hints[field.name]
        found[field.name] = _annotation(config, field, kind, extra.get(field.name, {}))
    return SimpleNamespace(**found)


def _text(default: Any) -> str | None:
    """A text-read field's default as typed on the command line (and shown by --help): a tuple as its comma list,
    a number or a word as itself."""
    if default is None:
        return None
    return ",".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)


def _read(field: dataclasses.Field, value: Any) -> Any:
    """A field's value from typer's: a text-read field's text parsed by its own rule."""
    parse = field.metadata.get("parse")
    return value if parse is None or value is None else parse(value)


def configured(config: type, *, skip: tuple[str, ...] = (), **extra: dict[str, Any]) -> Callable:
    """Make `f(cfg, **rest)` a typer command: its options are `config`'s fields (bar `skip`, which keep their
    defaults) then f's own parameters; typer's values become `config(...)`, checked, passed as `cfg`.

    The returned function keeps f's name and docstring (typer's command name and help).
    """
    annotations = options(config, **extra)

    def wrap(f: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(f, eval_str=True).parameters.values())[1:]]
        read = {fd.name: fd for fd in dataclasses.fields(config) if fd.name not in skip}
        made = [_parameter(fd, getattr(annotations, name)) for name, fd in read.items()]
        positional = [p for p in [*made, *own] if p.default is inspect.Parameter.empty]
        rest = [p for p in [*made, *own] if p.default is not inspect.Parameter.empty]

        @functools.wraps(f)
        def command(**given: Any) -> Any:
            with user_errors():
                cfg = config(**{name: _read(fd, given.pop(name)) for name, fd in read.items()})
                cfg.check()  # before any file is touched
            return f(cfg, **given)

        command.__signature__ = inspect.Signature(positional + rest)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in positional + rest}
        del command.__wrapped__  # typer must read the signature above, not f's
        return command

    return wrap


def _parameter(field: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    if field.metadata.get("parse"):
        default = _text(field.default)
    else:
        default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def json_option(what: str) -> Any:
    """`--json FILE`, as every command that writes JSON offers it."""
    return Annotated[Optional[Path], typer.Option("--json", dir_okay=False, help=f"Write {what} as JSON.")]


def csv_option(what: str) -> Any:
    """`--csv FILE`, as every command that writes CSV offers it."""
    return Annotated[Optional[Path], typer.Option("--csv", dir_okay=False, help=f"Write {what} as CSV.")]


# --clip-key, --teacher-key and --instruction of every command that reads chosen cache groups (fit-head, ablate,
# cache export): declared here once, from the one CacheGroups.
GROUP_OPTIONS = options(CacheGroups)

__all__ = ["GROUP_OPTIONS", "choice", "configured", "csv_option", "json_option", "options"]
