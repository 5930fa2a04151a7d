"""When a group already written (in a cache or a partial folder) was made by the configuration a run asks for.

One rule, used for the cache and the partial folder alike: values are compared
as text (HDF5 attributes and JSON give back other Python types than went in),
and only the keys that the existing group records. A key it lacks was added to
the configuration after that group was written, so caches of this format version
written before it stay valid (docs/cache-format.md, *Resuming*).
"""

from __future__ import annotations

from typing import Any, Mapping

from expclip.base.errors import ExpclipError
from expclip.cache.reader import attr_value


def _text(value: Any) -> str:
    value = attr_value(value)
    return str(list(value) if isinstance(value, tuple) else value)


def describe(config: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))


def check_same(where: str, path: str, had: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Refuse `wanted` when the group at /`path` in `where` was made by another configuration `had`."""
    keys = [k for k in wanted if k in had]
    before = {k: _text(had[k]) for k in keys}
    now = {k: _text(wanted[k]) for k in keys}
    if before != now:
        raise ExpclipError(
            f"{where}: /{path} was made by [{describe(before)}]; this run asks for "
            f"[{describe(now)}] under the same key; use another --out file"
        )
