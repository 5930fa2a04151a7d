"""Prompt sets for the text features: the protocol's five plus the user's `--prompts FILE.json`."""

from __future__ import annotations

from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.base.reading import read_json
from expclip.cache import format as fmt
from expclip.stages.shared import protocol


def load_prompt_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """User prompt sets `{"set": {"Happiness": ["...", ...], ...}}`, class names canonicalised."""
    data = read_json(Path(path), "prompt file")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ExpclipError(f'{path}: expected {{"set-name": {{"ClassName": ["prompt", ...]}}}}')
    sets = {}
    for name, classes in data.items():
        if fmt.sanitize(name) != name:
            raise ExpclipError(f"{path}: prompt set name {name!r} must use only letters, digits, '.', '_' and '-'")
        if not classes:
            raise ExpclipError(f"{path}: prompt set {name!r} is empty")
        sets[name] = {}
        for cls, prompts in classes.items():
            canonical = protocol.canonical_class(cls)
            if canonical is None:
                raise ExpclipError(
                    f"{path}: set {name!r}: unknown class {cls!r}; known: {', '.join(protocol.class_order())}"
                )
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ExpclipError(f"{path}: set {name!r}, class {cls!r}: expected a non-empty list of strings")
            sets[name][canonical] = prompts
    return sets


def text_rows(prompt_set: dict[str, list[str]]) -> tuple[list[str], list[int]]:
    """A prompt set as rows in canonical class order: (prompts, class index of each)."""
    order = protocol.class_order()
    pairs = [(p, order.index(c)) for c in order if c in prompt_set for p in prompt_set[c]]
    return [p for p, _ in pairs], [i for _, i in pairs]
