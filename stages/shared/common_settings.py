"""The settings several commands share, declared once: each stage's config takes its field from here, so
`--device`, `--clip-key`, `--teacher-key`, `--instruction` and `--label-map` mean (and default to) the same
everywhere (data only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from expclip.base.settings import setting
from expclip.stages.shared.labels import builtin_label_maps
from expclip.stages.shared.vocabulary import AUTO, DEVICE, DEVICE_HELP, DEVICES


def device(runs: str = "") -> Any:
    """`--device`; `runs` says what runs there when that is not obvious (e.g. a query encoder). Its forms
    (cuda:N among them) are checked as any choice is, before any work; whether the device exists here is
    `devices.resolve_device`'s question."""
    return setting(AUTO, f"{runs}{': ' if runs else ''}{DEVICE_HELP}", choices=DEVICES, pattern=DEVICE)


def clip_key() -> Any:
    """`--clip-key`: which CLIP image group of a cache."""
    return setting(None, "Image key when a cache holds several CLIP encoders.")


def label_map() -> Any:
    """`--label-map`: the shipped maps' names are read from their folder, not listed by hand."""
    return setting(None, f"{', '.join(builtin_label_maps())}, or a file: JSON {{\"1\": \"Surprise\"}} or CSV "
                         "label,name, for numeric class names.")


@dataclass
class CacheGroups:
    """Which feature groups of a cache a command reads when it holds several (fit-head's training caches, each
    of ablate's runs, cache export); stages/shared/select applies the choice, the same way for each."""

    clip_key: str | None = clip_key()
    teacher_key: str | None = setting(None, "Teacher key when a cache holds several teachers.")
    instruction: str | None = setting(None, "Instruction key (e.g. paper) or full text, when several exist.")
