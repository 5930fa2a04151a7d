"""Configuration fields that carry their own help and choices, so each default is stated once.

A stage's config dataclass declares `name: type = setting(default, "help", choices=...)`;
the CLI builds its options from those fields (default, help, choices) and
`check_choices` refuses a value outside them with the option's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable

from expclip.base.errors import ExpclipError

REQUIRED = dataclasses.MISSING  # a setting without a default: the command's option is required


def setting(
    default: Any, help: str, *, choices: tuple[str, ...] | None = None, pattern: re.Pattern[str] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with its default (or REQUIRED), its one-line help and (optionally) its allowed values:
    `choices` as listed, or the forms they name matched by the compiled `pattern` (e.g. cuda:N), which the code
    acting on the value matches too, so the forms are written once. `parse` reads a value typed as text on the
    command line (a comma list, a number or a word), refusing text it cannot read with an ExpclipError naming
    the option; its range stays the config's check()."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "pattern": pattern,
                                                        "parse": parse})


def finite_number(v: Any) -> bool:
    """A finite int or float read from an option or a file (True and False are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(v: Any) -> bool:
    """An int read from an option or a file (True and False are not integers here)."""
    return isinstance(v, int) and not isinstance(v, bool)


def option_name(name: str) -> str:
    """The command-line spelling of a field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def as_json(config: Any) -> dict:
    """A config dataclass as JSON values (tuples as lists, paths as strings): how HEAD.json and run results
    record one, `run` compares a head's, and ablation keys its runs."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def value_problem(field: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for `field` (outside its declared choices), else None: the one choice rule,
    which the CLI applies as it parses and `check_choices` for API callers."""
    allowed, pattern = field.metadata.get("choices"), field.metadata.get("pattern")
    if pattern is not None:
        known = isinstance(value, str) and pattern.fullmatch(value) is not None
    else:
        known = not allowed or value in allowed
    return None if known else f"{value!r} is not one of {', '.join(allowed)}"


def check_choices(config: Any) -> None:
    """Refuse any field whose value lies outside its declared choices, naming the option."""
    for f in dataclasses.fields(config):
        problem = value_problem(f, getattr(config, f.name))
        if problem:
            raise ExpclipError(f"{option_name(f.name)}: {problem}")
