"""Which fp32 GEMM path is fastest for fit-head's four products on this CPU?

fit-head's paper step is four matrix products (B=512, d=768, Dt=4096):
Z = X·Wᵀ, C = Z·Enᵀ, dZ = G·En, dW = dZᵀ·X. This times each through
torch.matmul (the default BLAS, MKL on x86 wheels) and through oneDNN's fp32
linear, at a given thread count, and prints a table. Both are exact fp32.

    python benchmarks/gemm_paths.py [--threads 2] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

B, D, DT = 512, 768, 4096


def _onednn(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_tᵀ through oneDNN's fp32 linear."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


def _time(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(B, D, generator=g), torch.randn(DT, D, generator=g)
    en, z, grad = torch.randn(B, DT, generator=g), torch.randn(B, DT, generator=g), torch.randn(B, B, generator=g)
    en_t, z_t, x_t = en.t().contiguous(), z.t().contiguous(), x.t().contiguous()
    products = {  # name: (flop, default path, oneDNN path)
        "Z = X·Wᵀ": (2 * B * D * DT, lambda: x @ w.t(), lambda: _onednn(x, w)),
        "C = Z·Enᵀ": (2 * B * DT * B, lambda: z @ en.t(), lambda: _onednn(z, en)),
        "dZ = G·En": (2 * B * B * DT, lambda: grad @ en, lambda: _onednn(grad, en_t)),
        "dW = dZᵀ·X": (2 * DT * B * D, lambda: z.t() @ x, lambda: _onednn(z_t, x_t)),
    }
    table = Table(
        title=f"fp32 GEMMs of one fit-head step, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    for col in ("product", "GFLOP", "matmul ms", "GFLOP/s", "oneDNN ms", "GFLOP/s", "max |diff|"):
        table.add_column(col, justify="right")
    totals = [0.0, 0.0, 0.0]
    for name, (flop, default, onednn) in products.items():
        a, b = default(), onednn()
        t_default, t_onednn = _time(default, args.repeat), _time(onednn, args.repeat)
        totals[0] += flop / 1e9
        totals[1] += t_default
        totals[2] += t_onednn
        table.add_row(name, f"{flop / 1e9:.2f}", f"{1e3 * t_default:.1f}", f"{flop / t_default / 1e9:.0f}",
                      f"{1e3 * t_onednn:.1f}", f"{flop / t_onednn / 1e9:.0f}", f"{(a - b).abs().max().item():.1e}")
    table.add_row("step", f"{totals[0]:.2f}", f"{1e3 * totals[1]:.1f}", f"{totals[0] / totals[1]:.0f}",
                  f"{1e3 * totals[2]:.1f}", f"{totals[0] / totals[2]:.0f}", "", style="bold")
    table.caption = f"475 steps (paper run): matmul ≈ {475 * totals[1]:.1f} s, oneDNN ≈ {475 * totals[2]:.1f} s of GEMM"
    Console().print(table)


if __name__ == "__main__":
    main()
