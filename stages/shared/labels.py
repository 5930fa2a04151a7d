"""A cache's labels in the canonical Exp-CLIP classes, matched by name, never by folder order.

Folders sort alphabetically ("angry", "happy", "sad", ...), list files number
classes their own way (RAF-DB 1-7, AffectNet 0-7), and the protocol orders them
Happiness, Sadness, Neutral, ... . Scoring by position would silently swap
classes, so every class name is translated to a canonical name (synonyms via
`protocol.canonical_class`, numeric names through a `--label-map` file) and a
dataset is scored on the canonical classes it has, in canonical order.

A label map's errors name the file, line and field, never what the file holds:
`--label-map` may be given any file, and its first line is nobody's business.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from expclip.base.errors import ExpclipError
from expclip.base.reading import parse_json, read_text
from expclip.stages.shared import protocol


@dataclass(frozen=True)
class Labels:
    """Ground truth in a dataset's own canonical classes."""

    classes: list[str]  # canonical names present in the cache's class_names, canonical order
    y: np.ndarray  # (N,) int64 index into `classes`, -1 = unlabelled


def _valid_names() -> str:
    return ", ".join(protocol.class_order())


def _line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth occurrence of `needle` (json reports no lines for values), else 1."""
    at = -1
    for _ in range(nth):
        at = text.find(needle, at + 1)
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _read_json_map(path: Path, text: str) -> dict[str, str]:
    def pairs(items: list[tuple]) -> dict:
        seen: dict = {}
        for k, v in items:
            if k in seen:
                raise ExpclipError(f"{path}:{_line_of(text, json.dumps(k), 2)}: a label appears twice (the key)")
            seen[k] = v
        return seen

    data = parse_json(path, text, object_pairs_hook=pairs)
    if not isinstance(data, dict):
        raise ExpclipError(f"{path}:1: a label map is a JSON object {{\"label\": \"class name\", ...}}")
    found = {}
    for label, name in data.items():
        line = _line_of(text, json.dumps(label))
        if not isinstance(name, str):
            raise ExpclipError(f"{path}:{line}: the value is not a class name (a string)")
        found[label] = _checked(path, line, "the value", name)
    return found


def _read_table_map(path: Path, text: str) -> dict[str, str]:
    """`label,name` rows (comma or whitespace separated); blank lines, `#` comments and a header skipped."""
    found: dict[str, str] = {}
    first: dict[str, int] = {}  # label -> its line
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cells = next(csv.reader(io.StringIO(line))) if "," in line else line.split(None, 1)
        cells = [c.strip() for c in cells]
        if len(cells) != 2 or not all(cells):
            raise ExpclipError(f"{path}:{line_no}: expected two columns `label,name`, both non-empty "
                               f"(found {len(cells)} field{'s' if len(cells) != 1 else ''})")
        label, name = cells
        if not found and (label.lower(), name.lower()) == ("label", "name"):
            continue
        if label in found:
            raise ExpclipError(f"{path}:{line_no}: field 1 (label) repeats the label of line {first[label]}")
        found[label], first[label] = _checked(path, line_no, "field 2 (name)", name), line_no
    if not found:
        raise ExpclipError(f"{path}: empty label map; expected `label,name` rows")
    return found


def _checked(path: Path, line: int, field: str, name: str) -> str:
    canonical = protocol.canonical_class(name)
    if canonical is None:
        raise ExpclipError(f"{path}:{line}: {field} is not a class; valid: {_valid_names()} "
                           "(case-insensitive, usual synonyms)")
    return canonical


def builtin_label_maps() -> list[str]:
    """Names of the label maps shipped with expclip (`--label-map rafdb`)."""
    return sorted(
        p.stem
        for p in resources.files("expclip.stages.shared").joinpath("label_maps").iterdir()
        if p.name.endswith(".csv")
    )


def read_label_map(path: Path | str) -> dict[str, str]:
    """A `--label-map` file, or a built-in map's name, as {cache class name: canonical class}.

    JSON `{"1": "Surprise", ...}` (`.json`) or two-column CSV/TXT `label,name`
    (any other suffix). Names go through the usual synonyms; errors name file:line.
    Built-ins: `rafdb` (RAF-DB 1-7) and `affectnet` (AffectNet 0-7).
    """
    if not Path(path).exists() and str(path).lower() in builtin_label_maps():
        path = Path(str(resources.files("expclip.stages.shared").joinpath("label_maps", f"{str(path).lower()}.csv")))
    path = Path(path)
    if not path.exists():
        raise ExpclipError(
            f"--label-map {path}: no such file, and not a built-in map ({', '.join(builtin_label_maps())})"
        )
    text = read_text(path, "label map")
    if path.suffix.lower() == ".json":
        return _read_json_map(path, text)
    return _read_table_map(path, text)


def canonical_names(
    class_names: list[str], label_map: dict[str, str] | None = None, *, where: str = "cache"
) -> list[str]:
    """The canonical class each of a cache's class names means; unknown or doubled names are refused."""
    label_map = label_map or {}
    resolved = [protocol.canonical_class(label_map.get(name, name)) for name in class_names]
    unknown = [n for n, c in zip(class_names, resolved) if c is None]
    if unknown:
        hint = (
            ""
            if label_map
            else f"; numeric class names need --label-map (built-in: {', '.join(builtin_label_maps())}; or a FILE)"
        )
        raise ExpclipError(
            f"{where}: unknown class names {unknown} in /items/class_names; valid: {_valid_names()} "
            f"(case-insensitive, usual synonyms){hint}"
        )
    for i, c in enumerate(resolved):
        if c in resolved[:i]:
            other = class_names[resolved.index(c)]
            raise ExpclipError(f"{where}: class names {other!r} and {class_names[i]!r} both mean {c}")
    return resolved  # type: ignore[return-value]


def dataset_labels(
    class_names: list[str], labels: np.ndarray, label_map: dict[str, str] | None = None, *, where: str = "cache"
) -> Labels:
    """Re-index a cache's labels (into its class_names) onto its canonical classes in canonical order.

    A class name that no item carries and that means nothing (e.g. "0" of a
    RAF-DB list numbered 1-7) is a placeholder, not a class, and is left out.
    """
    labels = np.asarray(labels, dtype=np.int64)
    bad = (labels < -1) | (labels >= len(class_names))
    if bad.any():
        raise ExpclipError(f"{where}: /items/label holds {labels[bad][0]}, outside 0..{len(class_names) - 1}")
    used = set(labels[labels >= 0].tolist())
    label_map = label_map or {}
    kept = [
        i
        for i, name in enumerate(class_names)
        if i in used or protocol.canonical_class(label_map.get(name, name)) is not None
    ]
    resolved = dict(zip(kept, canonical_names([class_names[i] for i in kept], label_map, where=where), strict=True))
    classes = [c for c in protocol.class_order() if c in resolved.values()]
    to_dataset = np.array([classes.index(resolved[i]) if i in resolved else -1 for i in range(len(class_names))] + [-1])
    return Labels(classes=classes, y=to_dataset[labels])  # label -1 picks the trailing -1
