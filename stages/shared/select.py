"""Which groups of a cache a stage reads: one key-selection policy for fit-head, evaluate
and cache export.

An explicit choice must exist in the cache; without one, the only candidate is
taken; several candidates are an error that lists them and names the option
that picks one. For evaluation the head narrows the candidates first: to the
CLIP encoder it was trained on (its HEAD.json), else to the features of its size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.stages.shared.clip_identity import clip_identity
from expclip.stages.shared.heads import Head


def choose(what: str, option: str, wanted: str | None, choices: list[str], where: Path) -> str:
    """`wanted` when the cache has it, else the only choice; anything else is an error listing the choices."""
    if wanted is not None and wanted in choices:
        return wanted
    if wanted is None and len(choices) == 1:
        return choices[0]
    listed = ", ".join(choices) or "none"
    if wanted is None and not choices:
        raise ExpclipError(f"{where}: has no {what}; run `expclip extract` with it first")
    if wanted is None:
        raise ExpclipError(f"{where}: holds several {what}s; choose one with {option}: {listed}")
    raise ExpclipError(f"{option}: {where} has no {what} {wanted!r}; it has: {listed}")


def training_keys(reader: CacheReader, clip_key: str | None, teacher_key: str | None,
                  instruction: str | None) -> tuple[str, str, str]:
    """(image key, teacher key, instruction key); the instruction may be given as its key or its full text."""
    key = choose("CLIP image key", "--clip-key", clip_key, reader.image_keys(), reader.path)
    return (key, *teacher_group(reader, teacher_key, instruction))


def teacher_group(reader: CacheReader, teacher_key: str | None, instruction: str | None) -> tuple[str, str]:
    """(teacher key, instruction key): fit-head's and export's one rule; the instruction as its key or full text."""
    pairs = reader.teacher_keys()
    tkey = choose("teacher key", "--teacher-key", teacher_key, sorted({t for t, _ in pairs}), reader.path)
    texts = {i: str(reader.teacher_attrs(tkey, i).get("instruction", "")) for t, i in pairs if t == tkey}
    by_text = {text: i for i, text in texts.items()}
    ikey = choose("instruction", "--instruction", by_text.get(instruction, instruction), sorted(texts), reader.path)
    return tkey, ikey


def _trained_on(head: Head, key: str, attrs: dict) -> bool:
    """Whether the head's recorded CLIP encoder is the one behind a cache's image key."""
    if head.encoder is not None:
        return head.encoder == clip_identity(attrs)
    return str(head.meta.get("clip_key", "")).removesuffix(fmt.OFFICIAL_SUFFIX) == key.removesuffix(fmt.OFFICIAL_SUFFIX)


def evaluation_key(reader: CacheReader, head: Head | None, clip_key: str | None) -> str:
    """The image key to evaluate: --clip-key, else the head's encoder, else the only one of the head's size."""
    keys = reader.image_keys()
    if not keys:
        raise ExpclipError(f"{reader.path}: no CLIP image features (/image/<key>); run `expclip extract` first")
    if clip_key is not None and clip_key not in keys:
        raise ExpclipError(f"--clip-key: {reader.path} has no /image/{clip_key}; it has: {', '.join(keys)}")
    dims = {k: int(reader.image_attrs(k).get("embed_dim", 0)) for k in keys}
    candidates = [clip_key] if clip_key else keys
    if head is not None and head.has_provenance:
        matching = [k for k in candidates if _trained_on(head, k, reader.image_attrs(k))]
        if not matching:
            raise ExpclipError(
                f"{reader.path}: the head was trained on CLIP {head.describe_encoder()}, but "
                f"{'/image/' + clip_key if clip_key else 'this cache'} holds {', '.join(candidates)}; "
                "evaluate it on a cache extracted with the same CLIP model and weights"
            )
        candidates = [k for k in matching if k == head.meta.get("clip_key")] or matching
    elif head is not None:
        sized = [k for k in candidates if dims[k] == head.d]
        if not sized:
            listed = ", ".join(f"{k} (d={dims[k]})" for k in candidates)
            raise ExpclipError(f"{reader.path}: the head maps {head.d}-d CLIP features; this cache has {listed}")
        candidates = sized
    if len(candidates) > 1:
        listed = ", ".join(f"{k} (d={dims[k]})" for k in candidates)
        raise ExpclipError(f"{reader.path}: several CLIP keys fit ({listed}); choose one with --clip-key")
    key = candidates[0]
    if head is not None:
        _check_head(reader, key, head, dims[key])
    return key


def _check_head(reader: CacheReader, key: str, head: Head, dim: int) -> None:
    """Refuse a head of another size; warn where provenance is missing or the transforms differ."""
    if head.d != dim:
        raise ExpclipError(
            f"{reader.path}: /image/{key} features are {dim}-d but the head maps {head.d}-d CLIP features"
        )
    if not head.has_provenance:
        what = "an official .pth" if head.official else "no HEAD.json"
        warnings.warn(
            f"the head has no provenance ({what}): cannot check that it was trained on the CLIP encoder "
            f"of {reader.path} /image/{key}; evaluating it because the dimensions match (d={head.d})",
            stacklevel=4,
        )
        return
    trained, here = head.clip.get("transform"), reader.image_attrs(key).get("transform")
    if trained and here and trained != here:
        warnings.warn(
            f"the head was trained on features with transform {trained!r}; {reader.path} /image/{key} used {here!r}",
            stacklevel=4,
        )
