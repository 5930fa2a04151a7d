"""HEAD.json, a head's card: written with the sha256 of HEAD.safetensors and of itself, checked on every load.

A head decides every verdict, so a damaged one must be refused, not used:
`weights_sha256` is the sha256 of HEAD.safetensors as written and
`card_sha256` that of the card's other fields (canonical JSON), so a flipped
byte or a hand edit in either file is one error line instead of other numbers.
The fields loaders read (`clip`, `clip_key`, `logit_scale`, `kind`, `d`, `dt`,
and what `expclip run` reports of a head it reuses) are checked for type and
range too, before writing and after reading: a logit scale of -5 would invert
every verdict, NaN would make every probability NaN.

A card without these checksums (written before heads were checked) is refused
with the advice to re-run fit-head: it cannot tell a damaged head from a sound
one, and no such head was ever released.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from expclip.base.errors import ExpclipError
from expclip.base.reading import read_json
from expclip.base.settings import finite_number, integer
from expclip.stages.shared.digests import seal, sealed
from expclip.stages.shared.vocabulary import HEAD_KINDS

WEIGHTS_SHA256 = "weights_sha256"
CARD_SHA256 = "card_sha256"
CHECKSUMS = (WEIGHTS_SHA256, CARD_SHA256)
RERUN = "re-run fit-head to write it again"


def _positive_int(v: Any) -> bool:
    return integer(v) and v > 0


def _positive_number(v: Any) -> bool:
    return finite_number(v) and v > 0


def _text_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _epochs(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0
            and all(isinstance(h, dict) and finite_number(h.get("loss")) for h in v))


# Each field a loader reads: (is it acceptable, what it must be). Absent fields are not checked.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: v in HEAD_KINDS, "one of " + ", ".join(HEAD_KINDS)),
    "d": (_positive_int, "a positive integer"),
    "dt": (_positive_int, "a positive integer"),
    "logit_scale": (lambda v: v is None or _positive_number(v), "a finite number > 0"),
    "clip_key": (_text_or_none, "a text"),
    "clip": (lambda v: v is None or isinstance(v, dict), "an object"),
    "teacher_key": (_text_or_none, "a text"),
    "instruction_key": (_text_or_none, "a text"),
    # what `expclip run` reports of a head it reuses
    "n_train": (_positive_int, "a positive integer"),
    "history": (_epochs, "a list of epochs, each with a finite loss"),
    "wall_seconds": (lambda v: finite_number(v) and v >= 0, "a finite number >= 0"),
    "caches": (lambda v: isinstance(v, list) and all(isinstance(c, dict) for c in v), "a list of objects"),
}
CLIP_FIELDS = ("model", "pretrained", "pretrained_sha256", "transform")  # each a text when present


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(meta: dict, card: Path) -> None:
    """Refuse a card whose read fields have the wrong type or range, naming the field and the file."""
    for name, (ok, wanted) in FIELDS.items():
        if name in meta and not ok(meta[name]):
            raise ExpclipError(f"{card}: {name} must be {wanted}; found {_shown(meta[name])}")
    for name in CLIP_FIELDS:
        value = (meta.get("clip") or {}).get(name)
        if not _text_or_none(value):
            raise ExpclipError(f"{card}: clip.{name} must be a text; found {_shown(value)}")


def card_text(meta: dict, weights_sha256: str, card: Path) -> str:
    """The card's text: `meta` (checked) with the weights' sha256 and its own; NaN or inf is refused (not JSON)."""
    check_fields(meta, card)
    fields = {k: v for k, v in meta.items() if k not in CHECKSUMS}
    fields[WEIGHTS_SHA256] = weights_sha256
    return json.dumps(seal(fields, CARD_SHA256), indent=1, allow_nan=False) + "\n"


def read_card(card: Path, weights: Path, weights_sha256: str) -> dict:
    """The card's fields (checksums left out) once it and the weights' bytes match what it records."""
    meta = read_json(card, "head card")
    if not isinstance(meta, dict):
        raise ExpclipError(f"{card}: a head card is a JSON object, found {type(meta).__name__}")
    if WEIGHTS_SHA256 not in meta and CARD_SHA256 not in meta:
        raise ExpclipError(f"{card}: records no {WEIGHTS_SHA256} (written before expclip checked heads); {RERUN}")
    if not sealed(meta, CARD_SHA256):
        raise ExpclipError(f"{card}: its fields do not match its {CARD_SHA256} (damaged or edited); {RERUN}")
    fields = {k: v for k, v in meta.items() if k != CARD_SHA256}
    if fields.pop(WEIGHTS_SHA256, None) != weights_sha256:
        raise ExpclipError(f"{weights}: its bytes do not match the {WEIGHTS_SHA256} that {card.name} records "
                           f"(damaged or replaced); {RERUN}")
    check_fields(fields, card)
    return fields
