"""Stage one's speed levers, chosen from ExtractConfig and applied to the loaded encoders.

Each lever is decided before any model loads (`check_levers`: a refusal costs
no loading time) and applied once the encoders are loaded (`apply_levers`):
CLIP's weights cast to bf16, float8 linear layers (`--precision fp8`), and
torch.compile of every tower. The ones that change features are recorded in the
cache by the precision name (`clip_precision_name`, shared/precision.py).
"""

from __future__ import annotations

import torch

from expclip.base.errors import ExpclipError
from expclip.stages.encoders.base import ImageEncoder
from expclip.stages.encoders.clip import ClipEncoder
from expclip.stages.encoders.compiled import Compile, compile_encoder, static_compile
from expclip.stages.encoders.towers import bf16_weights, towers
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.shared.fp8 import check_fp8, to_fp8
from expclip.stages.shared.precision import BF16_WEIGHTS
from expclip.stages.shared.vocabulary import AUTO, FP8

COMPILING = "compiling"  # the summary's time of the warm-up passes that compile the towers


def bf16_clip_weights(cfg: ExtractConfig, precision: str) -> bool:
    """Whether CLIP runs with bf16 weights: asked for under bf16 (fp8 casts them anyway, to convert them)."""
    return cfg.clip_weights == "bfloat16" and precision == "bf16"


def clip_precision_name(cfg: ExtractConfig, precision: str, recorded: str) -> str:
    """The precision CLIP's groups record: `recorded` (the dtype name), or BF16_WEIGHTS, so a cache written with
    bf16 weights never counts as one written with float32 weights under autocast, nor the other way round."""
    return BF16_WEIGHTS if bf16_clip_weights(cfg, precision) else recorded


def compiles(cfg: ExtractConfig, device: torch.device) -> bool:
    """Whether the towers are compiled: `on` on CUDA only; `auto` is off until a GPU run shows compiling pays."""
    if cfg.compile == "on" and device.type != "cuda":
        raise ExpclipError(f"--compile on: compiling pays only on CUDA; on the {device.type.upper()} "
                           "use --compile off (or auto)")
    return cfg.compile == "on"


def check_levers(cfg: ExtractConfig, device: torch.device, precision: str) -> None:
    """Refuse, before any model loads, a lever this device or precision cannot run."""
    if cfg.clip_weights == "bfloat16" and precision not in ("bf16", FP8):
        raise ExpclipError(f"--clip-weights bfloat16: needs --precision bf16 (this run resolves to {precision}"
                           f"{' from auto' if cfg.precision == AUTO else ''})")
    if precision == FP8:
        check_fp8(device)
    compiles(cfg, device)


def apply_levers(encoders: dict[str, ImageEncoder], cfg: ExtractConfig, device: torch.device, precision: str,
                 compile_fn: Compile = static_compile) -> tuple[dict[str, ImageEncoder], float]:
    """(the encoders with the chosen levers applied, seconds spent compiling)."""
    for encoder in encoders.values():
        if isinstance(encoder, ClipEncoder) and (bf16_clip_weights(cfg, precision) or precision == FP8):
            bf16_weights(encoder.model)
        if precision == FP8:
            for tower in towers(encoder).values():
                to_fp8(tower, device)
    if not compiles(cfg, device):
        return encoders, 0.0
    compiled, seconds = {}, 0.0
    for path, encoder in encoders.items():
        compiled[path], spent = compile_encoder(encoder, cfg.batch_for(device.type), compile_fn)
        seconds += spent
    return compiled, seconds
