"""Stage two: fit the head W so that norm(W·CLIP(image)) matches the frozen teacher feature.

The loss is the paper's symmetric InfoNCE,
    logits = s · norm(W I) · norm(E)ᵀ,   loss = ½ CE(logits, arange) + ½ CE(logitsᵀ, arange),
with s = exp(CLIP's logit_scale) read from the cache (frozen). Defaults are the
official run: SGD lr 1e-3, momentum 0.9, weight decay 1e-4, batch 512 with
drop_last, 5 epochs, MultiStepLR(milestones=[30], gamma=0.1) stepped per epoch.
Data order (data.py): one `torch.randperm(n)` per epoch from a generator
seeded with `seed`; batch s is rows order[s·B:(s+1)·B], and the last n mod B
rows are dropped. Selections larger than `--max-memory` are streamed from the
cache instead, in shuffled buffers of blocks (HEAD.json's `mode` says which).

Speed: everything that needs no gradient is done once (features to float32 on
the training device, teacher rows normalised, batches gathered by index there);
the steps never wait for the device (no host sync until an epoch ends). For the paper's head
(linear, SGD, fixed scale) the gradient is written out by hand
(`linear_grad`): four matrix products and nothing else of size B×Dt, so the
CPU spends its time in GEMMs; `--precision bf16` multiplies those four in bf16
(everything else stays float32), which CPUs with avx512_bf16 or AMX do faster
than fp32 and others emulate slowly (a warning says so); on CUDA, `--precision tf32`
keeps float32 tensors and lets tensor cores multiply them. Every other configuration uses autograd. Both feed
the same `torch.optim.SGD` / `AdamW` and the same MultiStepLR.

Several heads at once (`fit_heads`, for ablation grids): configurations that
share the data order (same batch size, seed, epochs, caches) and the by-hand
gradient differ only in what each head's own optimizer and scale do, so they
train in one pass over the data: their weights are stacked (K, Dt, d), the
gradient's four products are batched over K, and each head keeps its own
SGD, momentum and MultiStepLR. On the CPU the heads are computed one after the
other with plain 2-D products, so each equals the head trained alone bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F

from expclip.base.errors import ExpclipError
from expclip.base.settings import as_json
from expclip.base.version import __version__
from expclip.stages.fit_head.config import LEARNABLE, FitConfig
from expclip.stages.fit_head.data import EPS, Selection, batches, select
from expclip.stages.shared.devices import free_bytes, resolve_device
from expclip.stages.shared.exclusion import Exclusion
from expclip.stages.shared.heads import build_head, load_head, save_head
from expclip.stages.shared.precision import native_bf16, tensor_cores, torch_dtype
from expclip.stages.shared.progress import progress, stderr


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """The paper's symmetric cross-entropy over in-batch pairs (row i matches column i)."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def linear_grad(weight: torch.Tensor, x: torch.Tensor, en: torch.Tensor, scale: torch.Tensor,
                dtype: torch.dtype = torch.float32, grad_out: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits, dloss/dW) of a linear head — or of K stacked heads — by four GEMMs, no autograd.

    `weight` is (Dt, d), or (K, Dt, d) for K heads sharing the batch; `scale`
    broadcasts against the (…, B, B) logits (a 0-d tensor, or (K, 1, 1)). The
    GEMMs multiply in `dtype` (bf16: their inputs rounded, products accumulated
    and returned in float32); everything else is float32.
    With Z = X Wᵀ, n = |Z| (rows), C = Z Enᵀ and logits L = s·C/n:
    G = dloss/d(norm(Z) Enᵀ) = s/(2B)·(softmax_rows(L) + softmax_cols(L) − 2I),
    dZ = (G/n) En − Z·(r/n²) with r = rowsum(G ⊙ L)/s, and dW = dZᵀ X.
    Normalising Z never materialises: 1/n scales the small B×B matrices instead.
    `grad_out` (float32 only) receives dW: a buffer kept across steps spares the
    CPU mapping fresh pages (page faults) for a new dW every step.
    """
    def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if dtype == torch.float32:
            return torch.matmul(a, b, out=out)  # no copies at all in float32
        return (a.to(dtype) @ b.to(dtype)).float()

    b = x.shape[0]
    z = mm(x, weight.transpose(-1, -2))  # (…, B, Dt)
    n = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min_(EPS)
    logits = mm(z, en.t()).mul_(scale / n)  # (…, B, B)
    rows, cols = torch.log_softmax(logits, -1), torch.log_softmax(logits, -2)
    loss = -(rows.diagonal(dim1=-2, dim2=-1).mean(-1) + cols.diagonal(dim1=-2, dim2=-1).mean(-1)) / 2
    g = rows.exp_().add_(cols.exp_())
    g.diagonal(dim1=-2, dim2=-1).sub_(2)
    g.mul_(scale / (2 * b))
    r = (g * logits).sum(-1, keepdim=True).div_(scale)
    dz = mm(g / n, en)  # (…, B, Dt)
    dz.addcmul_(z, r / n.square(), value=-1)
    return loss, logits, mm(dz.transpose(-1, -2), x, grad_out)  # dW: (…, Dt, d)


def _heads_grad(stack: torch.Tensor, x: torch.Tensor, en: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | torch.Tensor]:
    """`linear_grad` of K stacked heads: batched on CUDA (one launch per product for all K); head by head on
    the CPU, where each product is then a plain 2-D GEMM (batched products go through bmm and extra copies
    there) and each head's arithmetic is exactly that of the head trained alone."""
    if stack.device.type == "cuda":
        return linear_grad(stack, x, en, scales, dtype)
    out = grads if dtype == torch.float32 else [None] * len(stack)
    each = [linear_grad(w, x, en, s, dtype, o) for w, s, o in zip(stack, scales, out, strict=True)]
    return torch.stack([e[0] for e in each]), torch.stack([e[1] for e in each]), [e[2] for e in each]


def _initial_head(config: FitConfig, d: int, dt: int) -> torch.nn.Module:
    """The default init under the seed, or a copy of --init-from (same kind and sizes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module = build_head(config.head, d, dt)
    if config.init_from is not None:
        start = load_head(Path(config.init_from))
        if start.kind != config.head:
            raise ExpclipError(f"--init-from {config.init_from}: a {start.kind} head, but --head is {config.head}")
        try:
            module.load_state_dict(start.module.state_dict())
        except RuntimeError:
            raise ExpclipError(f"--init-from {config.init_from}: its sizes do not fit d={d}, Dt={dt}") from None
    return module


# what heads trained together may differ in
PER_HEAD = ("lr", "momentum", "weight_decay", "milestones", "gamma", "logit_scale")


def by_hand(config: FitConfig) -> bool:
    """Whether the hand-written gradient applies: the paper's head (linear, SGD, fixed scale), fp32 or bf16."""
    return config.head == "linear" and config.optimizer == "sgd" and config.logit_scale != LEARNABLE


def shared_order(config: FitConfig) -> tuple | None:
    """What configurations must share to train together (their data order and the rest); None: train alone."""
    if not by_hand(config):
        return None
    return tuple((f.name, str(getattr(config, f.name))) for f in fields(config) if f.name not in PER_HEAD)


def fit_head(
    caches: list[Path],
    out: Path,
    config: FitConfig,
    *,
    clip_key: str | None = None,
    teacher_key: str | None = None,
    instruction: str | None = None,
    exclude: Exclusion | None = None,
) -> dict:
    """Train a head on the caches' (image, teacher) pairs; write OUT.safetensors + OUT.json; return the JSON.
    `exclude` leaves rows out (recorded in HEAD.json's `excluded`)."""
    return fit_heads(
        caches, [out], [config], clip_key=clip_key, teacher_key=teacher_key, instruction=instruction, exclude=exclude
    )[0]


def fit_heads(
    caches: list[Path],
    outs: list[Path],
    configs: list[FitConfig],
    *,
    clip_key: str | None = None,
    teacher_key: str | None = None,
    instruction: str | None = None,
    exclude: Exclusion | None = None,
) -> list[dict]:
    """Train one head per configuration in one pass over the data (see the module's docstring); write each."""
    for config in configs:
        config.check()
    if len(configs) > 1 and (None in {shared_order(c) for c in configs} or len({shared_order(c) for c in configs}) > 1):
        raise ValueError("fit_heads: several configurations must share everything but " + ", ".join(PER_HEAD))
    first = configs[0]
    device = resolve_device(first.device)
    if first.precision == "bf16" and not native_bf16(device):
        stderr.print(
            "[yellow]warning:[/] this CPU has no native bf16 (avx512_bf16 or AMX): "
            "--precision bf16 runs slower than fp32 here",
            soft_wrap=True,
        )
    with tensor_cores(first.precision, device):
        return _fit(caches, outs, configs, device, clip_key, teacher_key, instruction, exclude)


def _fit(
    caches: list[Path],
    outs: list[Path],
    configs: list[FitConfig],
    device: torch.device,
    clip_key: str | None,
    teacher_key: str | None,
    instruction: str | None,
    exclude: Exclusion | None,
) -> list[dict]:
    """fit_heads' work once the device and its matrix-product precision are set."""
    first = configs[0]
    started = time.perf_counter()
    selection = select(caches, clip_key, teacher_key, instruction, exclude)
    n, d, dt, b = selection.n, selection.d, selection.dt, first.batch_size
    steps = n // b  # drop_last
    if steps == 0:
        raise ExpclipError(f"--batch-size {b}: larger than the {n} usable rows of the caches")
    scales = [_scale(c, selection, caches[0]) for c in configs]
    data = batches(selection, first.memory_budget(free_bytes(device)), device)
    read = time.perf_counter() - started  # selecting, and reading the features when they fit in memory
    hand = by_hand(first)
    modules = [_initial_head(c, d, dt).to(device) for c in configs]
    if hand:  # one (K, Dt, d) stack; each head's weight is a view of its slice, stepped by its own optimizer
        stack = torch.stack([m.weight.detach() for m in modules])
        for m, w in zip(modules, stack, strict=True):
            m.weight = torch.nn.Parameter(w)
        scale_t = torch.tensor(scales, device=device).view(-1, 1, 1)
        grads = torch.empty_like(stack)  # each step's dW lands here (on the CPU)
    learnable = first.logit_scale == LEARNABLE
    log_scale = torch.nn.Parameter(torch.tensor(math.log(scales[0]), device=device))
    opts = [_optimizer(c, list(m.parameters()) + ([log_scale] if learnable else [])) for c, m in zip(configs, modules)]
    scheds = [
        torch.optim.lr_scheduler.MultiStepLR(o, milestones=list(c.milestones), gamma=c.gamma)
        for c, o in zip(configs, opts)
    ]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=first.precision == "bf16")
    shuffle = torch.Generator().manual_seed(first.seed)
    target = torch.arange(b, device=device)  # row i of a batch matches column i
    histories: list[list[dict]] = [[] for _ in configs]
    with progress("steps") as bar:
        task = bar.add_task(
            "fit-head" if len(configs) == 1 else f"fit-head x{len(configs)}", total=steps * first.epochs
        )
        for epoch in range(first.epochs):
            # each step's (K,) losses, kept on the device: no host sync until the epoch ends. Copied into one
            # buffer: a loss may be a view whose storage holds the whole batch's logits.
            per_step = torch.zeros(len(configs), steps, device=device)
            correct = torch.zeros(len(configs), dtype=torch.long, device=device)
            for i, (x, en) in enumerate(data.epoch(b, shuffle)):
                if hand:
                    loss, logits, grad = _heads_grad(stack, x, en, scale_t, torch_dtype(first.precision), grads)
                    for m, g in zip(modules, grad, strict=True):
                        m.weight.grad = g
                else:
                    with autocast:
                        scale = log_scale.exp() if learnable else scales[0]
                        logits = (scale * F.normalize(modules[0](x), dim=-1) @ en.t()).unsqueeze(0)
                    loss = clip_loss(logits[0].float()).unsqueeze(0)
                    opts[0].zero_grad(set_to_none=True)
                    loss.backward()
                for opt in opts:
                    opt.step()
                per_step[:, i] = loss.detach()
                correct += (logits.detach().argmax(-1) == target).sum(-1)
                bar.advance(task)
            _refuse_divergence(
                per_step, [[*m.parameters(), *([log_scale] if learnable else [])] for m in modules], configs, epoch
            )
            loss_sum = per_step.sum(1)
            for k, sched in enumerate(scheds):
                sched.step()
                histories[k].append(
                    {
                        "epoch": epoch + 1,
                        "loss": loss_sum[k].item() / steps,
                        "accuracy": correct[k].item() / (steps * b),
                    }
                )
            bar.update(task, description=f"fit-head epoch {epoch + 1} loss {histories[0][-1]['loss']:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the steps run ahead of the host: wait before reading the clock
    wall = round(time.perf_counter() - started, 3)
    metas = []
    for k, (config, module, out) in enumerate(zip(configs, modules, outs, strict=True)):
        scale = float(log_scale.detach().exp()) if learnable else scales[k]
        meta = _meta(
            config,
            selection,
            data.describe(),
            device,
            scale,
            "by-hand" if hand else "autograd",
            histories[k],
            steps,
            {"wall_seconds": wall, "read_seconds": round(read, 3)},
            len(configs),
        )
        meta["excluded"] = None if exclude is None else {"rows": exclude.count(), **exclude.provenance}
        save_head(module.cpu(), config.head, meta, out)
        metas.append(meta)
    return metas


def _refuse_divergence(
    losses: torch.Tensor, trained: list[list[torch.Tensor]], configs: list[FitConfig], epoch: int
) -> None:
    """Stop, writing no head, when a head's loss (K, steps) or what it trains stopped being finite this epoch."""
    finite = torch.isfinite(losses)
    for k, params in enumerate(trained):
        if not bool(finite[k].all()):
            what, step = "loss", int((~finite[k]).nonzero()[0])  # the first step that went wrong
        elif not all(bool(torch.isfinite(p).all()) for p in params):
            what, step = "weights", losses.shape[1] - 1  # finite losses: the epoch's last step made them so
        else:
            continue
        c = configs[k]
        raise ExpclipError(
            f"fit-head: the training {what} became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
            f"(--lr {c.lr}, --momentum {c.momentum}, --weight-decay {c.weight_decay}); no head written: "
            "try a smaller --lr"
        )


def _scale(config: FitConfig, selection: Selection, cache: Path) -> float:
    """The logit scale a head starts from: --logit-scale, else the cache's CLIP logit_scale."""
    scale = selection.clip.get("logit_scale") if config.logit_scale in (None, LEARNABLE) else config.logit_scale
    if scale is None:
        raise ExpclipError(f"{cache}: /image/{selection.clip_key} has no logit_scale attribute; pass --logit-scale")
    return float(scale)


def _optimizer(config: FitConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":  # fused: one pass over W per step instead of four
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=True
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _meta(
    config: FitConfig,
    selection: Selection,
    data: dict,
    device: torch.device,
    scale: float,
    gradient: str,
    history: list[dict],
    steps: int,
    times: dict,
    together: int,
) -> dict:
    """HEAD.json: provenance (code, caches, groups, configuration) and what the training did."""
    return {
        "expclip_version": __version__,
        "kind": config.head,
        "d": selection.d,
        "dt": selection.dt,
        "clip_key": selection.clip_key,
        "clip": selection.clip,
        "teacher_key": selection.teacher_key,
        "teacher": selection.teacher_provenance,
        "teacher_model": str(selection.teacher_provenance.get("model", "")),
        "instruction_key": selection.instruction_key,
        "instruction": str(selection.teacher_provenance.get("instruction", "")),
        "config": as_json(config),
        "seed": config.seed,
        "logit_scale": scale,
        "device": str(device),
        "gradient": gradient,
        "caches": selection.used,
        "n_train": selection.n,
        "steps_per_epoch": steps,
        **data,
        "trained_together": together,
        "history": history,
        **times,
    }
