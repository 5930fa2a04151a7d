"""`--precision fp8`: float8 matrix products in the large linear layers, through torchao's float8 inference.

Float8 tensor cores exist from compute capability 8.9 (Ada, H100/H200); elsewhere
the option is refused in one line rather than run emulated under a name that
says otherwise. Only linear layers whose both sides are at least MIN_FEATURES
(and multiples of 16, as float8 kernels require) are converted: the small ones
(BLIP-2's 768-wide Q-Former) gain nothing and lose accuracy. Layers left in
float32 and layers converted already stay as they are.
torchao is an optional dependency (`pip install expclip[fp8]`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from expclip.base.errors import ExpclipError

FP8_CAPABILITY = (8, 9)
MIN_FEATURES = 1024


def check_fp8(device: torch.device) -> ModuleType:
    """torchao's quantization module when `device` can run float8 products; else one refusal naming why."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ExpclipError(f"--precision fp8: float8 products need a CUDA GPU of compute capability >= 8.9; "
                           f"on the {device.type.upper()} use bf16 or fp32")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_CAPABILITY:
        raise ExpclipError(f"--precision fp8: this GPU has compute capability {major}.{minor}; float8 products "
                           "need >= 8.9 (Ada, H100, H200): use bf16")
    try:
        return importlib.import_module("torchao.quantization")
    except ImportError:
        raise ExpclipError("--precision fp8: torchao is not installed; pip install 'expclip[fp8]'") from None


def large_linear(module: torch.nn.Module, _fqn: str = "") -> bool:
    """Whether `module` is a linear layer float8 is applied to: plain bf16 weights (not converted already), both
    sides large, multiples of 16."""
    if not isinstance(module, torch.nn.Linear) or module.weight.dtype != torch.bfloat16:
        return False
    if is_traceable_wrapper_subclass(module.weight.data):  # torchao's float8 tensors report their bf16 dtype
        return False
    sides = (module.in_features, module.out_features)
    return all(n >= MIN_FEATURES and n % 16 == 0 for n in sides)


def to_fp8(tower: torch.nn.Module, device: torch.device) -> int:
    """Convert `tower`'s large bf16 linear layers in place to float8 (dynamic per-row scales); returns how many."""
    quantization = check_fp8(device)
    count = sum(large_linear(m) for m in tower.modules())
    config = quantization.Float8DynamicActivationFloat8WeightConfig(granularity=quantization.PerRow())
    quantization.quantize_(tower, config, filter_fn=large_linear)
    return count
