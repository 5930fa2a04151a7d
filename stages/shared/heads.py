"""Heads: the trained map from CLIP image space to teacher space, its files and the official format.

A head is saved as `HEAD.safetensors` (weights, plus kind/d/dt in the
safetensors metadata so the weights alone can be rebuilt) and `HEAD.json`
(full provenance written by fit_head, with the sha256 of both files:
`head_card`). The official Exp-CLIP release is a `.pth` state dict `{"mlp.weight": (Dt, d)}`;
it is read only through torch's weights-only unpickler, so a file that would run code is refused, not run.
"""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as from_bytes
from safetensors.torch import save as to_bytes

from expclip.base.errors import ExpclipError
from expclip.cache.atomic import write_atomically
from expclip.stages.shared.clip_identity import clip_identity
from expclip.stages.shared.digests import sha256_hex
from expclip.stages.shared.head_card import card_text, read_card
from expclip.stages.shared.vocabulary import HEAD_KINDS

OFFICIAL_KEY = "mlp.weight"
FORMAT = "expclip-head"  # the safetensors metadata's `format`
_SUFFIXES = (".safetensors", ".json")


@dataclass
class Head:
    """A loaded head: the module, its kind and the HEAD.json provenance ({} for an official .pth)."""

    module: torch.nn.Module  # maps (..., d) -> (..., Dt)
    kind: str
    meta: dict = field(default_factory=dict)

    @property
    def official(self) -> bool:
        """True for a head loaded without provenance (the official release format)."""
        return not self.meta

    @property
    def d(self) -> int:
        """Width of the CLIP features the head maps."""
        return _dims(self.module)[0]

    @property
    def dt(self) -> int:
        """Width of the teacher space it maps them to."""
        return _dims(self.module)[1]

    @property
    def clip(self) -> dict:
        """The recorded provenance of the CLIP encoder it was trained on; {} when unknown."""
        clip = self.meta.get("clip")
        return clip if isinstance(clip, dict) and clip.get("model") else {}

    @property
    def encoder(self) -> tuple[str, str] | None:
        """(model, weights) identity of that encoder (stages.shared.clip_identity), None when unrecorded."""
        return clip_identity(self.clip) if self.clip else None

    @property
    def has_provenance(self) -> bool:
        """True when HEAD.json names the CLIP encoder (or at least its cache key)."""
        return bool(self.clip or self.meta.get("clip_key"))

    def describe_encoder(self) -> str:
        """The trained-on CLIP encoder, for messages."""
        if self.clip:
            return (
                f"{self.clip.get('model')} @ {self.clip.get('pretrained', '')} (key {self.meta.get('clip_key', '?')})"
            )
        return str(self.meta.get("clip_key"))

    def linear_weight(self) -> torch.Tensor | None:
        """(Dt, d) weight of a linear head, else None (MLP heads have no single matrix)."""
        return self.module.weight.detach() if self.kind == "linear" else None


def build_head(kind: str, d: int, dt: int) -> torch.nn.Module:
    """A fresh head with PyTorch's default initialisation.

    "linear" is the paper's head, Linear(d -> dt, bias=False). "mlp" is
    Linear(d -> d) -> GELU -> Linear(d -> dt, bias=False): one hidden layer the
    width of the CLIP space, for ablations beyond the paper.
    """
    if kind == "linear":
        return torch.nn.Linear(d, dt, bias=False)
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.Linear(d, dt, bias=False))
    raise ExpclipError(f"--head: unknown head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")


def _dims(module: torch.nn.Module) -> tuple[int, int]:
    """(d, dt) of a head built by build_head."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return layers[0].in_features, layers[-1].out_features


def head_files(path: Path) -> tuple[Path, Path]:
    """(HEAD.safetensors, HEAD.json) of a head named by its stem or either file."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in _SUFFIXES else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_head(module: torch.nn.Module, kind: str, meta: dict, out: Path) -> tuple[Path, Path]:
    """Write OUT.safetensors and OUT.json atomically (`out` may carry either suffix or none); the card records
    the weights' sha256 and its own (head_card). Both follow the umask, like every other output."""
    weights, card = head_files(out)
    d, dt = _dims(module)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    _check_tensors(state, weights)  # never write what load_head would refuse
    data = to_bytes(state, metadata={"format": FORMAT, "kind": kind, "d": str(d), "dt": str(dt)})
    text = card_text(meta, sha256_hex(data), card)  # checked before either file is written
    weights.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(weights, lambda tmp: tmp.write_bytes(data))
    write_atomically(card, lambda tmp: tmp.write_text(text, "utf-8"))
    return weights, card


def load_head(path: Path) -> Head:
    """Load HEAD (stem), HEAD.safetensors, HEAD.json, or an official .pth state dict.

    With HEAD.json, both files must match the sha256s it records; without it
    (weights alone, or a .pth: no record) the weights are checked for shape,
    type and finiteness only.
    """
    path = Path(path)
    if path.suffix == ".pth":
        return _load_official(path)
    weights, card = head_files(path)
    if not weights.is_file():
        raise ExpclipError(f"{path}: no head weights at {weights} (expected HEAD.safetensors or an official .pth)")
    try:
        data = weights.read_bytes()  # read once: the bytes checked are the bytes used
    except OSError as e:
        raise ExpclipError(f"{weights}: cannot be read ({e.strerror or e})") from None
    meta = read_card(card, weights, sha256_hex(data)) if card.is_file() else None
    info, state = _parse(weights, data)
    module = build_head(info["kind"], int(info["d"]), int(info["dt"]))
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ExpclipError(f"{weights}: weights do not fit a {info['kind']} head: {' '.join(str(e).split())}") from None
    _check_tensors(state, weights)
    if meta is None:  # no card: what the weights' own metadata says
        meta = {k: info[k] for k in ("kind", "d", "dt")}
    return Head(module=module, kind=info["kind"], meta=meta)


def _parse(weights: Path, data: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    """(safetensors metadata, tensors) of an expclip head's bytes, refused in one line when they are not one."""
    try:
        state = from_bytes(data)
        (size,) = struct.unpack("<Q", data[:8])
        info = json.loads(data[8:8 + size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, struct.error) as e:
        raise ExpclipError(f"{weights}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    dims = [str(info.get(k, "")) for k in ("d", "dt")]
    if (info.get("format") != FORMAT or info.get("kind") not in HEAD_KINDS
            or not all(v.isascii() and v.isdigit() and int(v) > 0 for v in dims)):
        raise ExpclipError(f"{weights}: not an expclip head (safetensors metadata {info})")
    return info, state


def _check_tensors(state: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse weights that are not floating point or not finite: NaN or inf would silently decide every verdict."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise ExpclipError(f"{where}: {name} holds {tensor.dtype} values; a head's weights are floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise ExpclipError(f"{where}: {name} holds NaN or infinite values; a head's weights must be finite")


def _load_official(path: Path) -> Head:
    """The official release: a weights-only state dict with one (Dt, d) tensor under mlp.weight."""
    if not path.is_file():
        raise ExpclipError(f"{path}: no such head file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise before a refusal
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise ExpclipError(
            f"{path}: refused: not a plain tensor state dict; it needs more than torch's weights-only "
            f"loader allows ({_unpickling_reason(e)}). expclip never runs code from a head file"
        ) from None
    if not isinstance(state, dict) or OFFICIAL_KEY not in state:
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ExpclipError(f"{path}: official head needs key {OFFICIAL_KEY!r}; found {found}")
    weight = state[OFFICIAL_KEY]
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ExpclipError(f"{path}: {OFFICIAL_KEY} must be a 2-D float (Dt, d) tensor; found {shape}")
    dt, d = weight.shape
    if not (d and dt):
        raise ExpclipError(f"{path}: {OFFICIAL_KEY} has shape {tuple(weight.shape)}; a head maps d > 0 to Dt > 0")
    _check_tensors({OFFICIAL_KEY: weight}, path)
    module = build_head("linear", d, dt)
    with torch.no_grad():
        module.weight.copy_(weight.float())
    return Head(module=module, kind="linear", meta={})


def _unpickling_reason(e: Exception) -> str:
    """The informative line of a weights-only failure (torch wraps it in generic advice)."""
    boiler = ("Weights only load failed", "Check the documentation", "Re-running", "Please file an issue")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(boiler)]
    return lines[0] if lines else type(e).__name__


def export_official(head: Head, out: Path) -> None:
    """Write a linear head as the official `.pth` state dict {"mlp.weight": (Dt, d) float32}."""
    weight = head.linear_weight()
    if weight is None:
        raise ExpclipError(f"{out}: the official format holds a linear head only; this head is {head.kind!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda tmp: torch.save({OFFICIAL_KEY: weight.float().cpu().contiguous().clone()}, tmp))
