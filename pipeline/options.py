"""Typer options built from a stage's config fields, so each default, help line and choice list is stated once.

`options(FitConfig).lr` is `Annotated[float, typer.Option(help=...)]`, with
`Literal[choices]` as the type where the field declares choices, so typer lists
them in --help and refuses anything else; the parameter's default is the
dataclass's own (`= FitConfig.lr`).
"""

from __future__ import annotations

import dataclasses
import typing
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import typer


def _field(config: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config)}[name]


def choice(values: tuple[str, ...]) -> Any:
    """A type typer offers as a fixed set of values."""
    return Literal[values]


def options(config: type, **extra: dict[str, Any]) -> SimpleNamespace:
    """One CLI annotation per field of `config`: its type (or `Literal[choices]`) with its help.

    `extra` adds typer.Option arguments per field, e.g. `batch_size={"min": 1}`.
    """
    hints = typing.get_type_hints(config)
    found = {}
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        kind = choice(choices) if choices else hints[field.name]
        found[field.name] = Annotated[kind, typer.Option(help=field.metadata["help"], **extra.get(field.name, {}))]
    return SimpleNamespace(**found)


def help_of(config: type, name: str) -> str:
    """A field's help line, for options the CLI parses itself (comma lists, number-or-word values)."""
    return _field(config, name).metadata["help"]
