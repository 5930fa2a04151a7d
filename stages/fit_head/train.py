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

Speed: everything that needs no gradient is done once (features to float32,
teacher rows normalised, batches gathered by index). For the paper's head
(linear, SGD, fixed scale, fp32) the gradient is written out by hand
(`linear_grad`): four matrix products and nothing else of size B×Dt, so the
CPU spends its time in GEMMs. Every other configuration uses autograd. Both feed
the same `torch.optim.SGD` / `AdamW` and the same MultiStepLR.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from expclip.base.version import __version__
from expclip.base.errors import ExpclipError
from expclip.stages.fit_head.config import LEARNABLE, FitConfig
from expclip.stages.fit_head.data import EPS, batches, select
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.heads import build_head, load_head, save_head
from expclip.stages.shared.progress import progress


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """The paper's symmetric cross-entropy over in-batch pairs (row i matches column i)."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def linear_grad(weight: torch.Tensor, x: torch.Tensor, en: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of a linear head; writes dloss/dW into weight.grad. Four GEMMs, no autograd.

    With Z = X Wᵀ, n = |Z| (rows), C = Z Enᵀ and logits L = s·C/n:
    G = dloss/d(norm(Z) Enᵀ) = s/(2B)·(softmax_rows(L) + softmax_cols(L) − 2I),
    dZ = (G/n) En − Z·(r/n²) with r = rowsum(G ⊙ L)/s, and dW = dZᵀ X.
    Normalising Z never materialises: 1/n scales the small B×B matrices instead.
    """
    b = x.shape[0]
    z = x @ weight.t()  # (B, Dt)
    n = torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min_(EPS)
    logits = (z @ en.t()).mul_(scale / n)  # (B, B)
    rows, cols = torch.log_softmax(logits, 1), torch.log_softmax(logits, 0)
    loss = -(rows.diagonal().mean() + cols.diagonal().mean()) / 2
    g = rows.exp_().add_(cols.exp_())
    g.diagonal().sub_(2)
    g.mul_(scale / (2 * b))
    r = (g * logits).sum(1, keepdim=True).div_(scale)
    dz = (g / n) @ en  # (B, Dt)
    dz.addcmul_(z, r / n.square(), value=-1)
    weight.grad = dz.t() @ x  # (Dt, d)
    return loss, logits


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


def fit_head(caches: list[Path], out: Path, config: FitConfig, *, clip_key: str | None = None,
             teacher_key: str | None = None, instruction: str | None = None) -> dict:
    """Train a head on the caches' (image, teacher) pairs; write OUT.safetensors + OUT.json; return the JSON."""
    config.check()
    device = resolve_device(config.device)
    started = time.perf_counter()
    selection = select(caches, clip_key, teacher_key, instruction)
    n, d, dt, b = selection.n, selection.d, selection.dt, config.batch_size
    steps = n // b  # drop_last
    if steps == 0:
        raise ExpclipError(f"--batch-size {b}: larger than the {n} usable rows of the caches")
    learnable = config.logit_scale == LEARNABLE
    scale0 = selection.clip.get("logit_scale") if config.logit_scale in (None, LEARNABLE) else config.logit_scale
    if scale0 is None:
        raise ExpclipError(f"{caches[0]}: /image/{selection.clip_key} has no logit_scale attribute; pass --logit-scale")
    scale0 = float(scale0)
    data = batches(selection, config.memory_budget(), device)
    module = _initial_head(config, d, dt).to(device)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(scale0), device=device))
    params = list(module.parameters()) + ([log_scale] if learnable else [])
    if config.optimizer == "sgd":  # fused: one pass over W per step instead of four
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=True)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.milestones), gamma=config.gamma)
    by_hand = config.head == "linear" and config.optimizer == "sgd" and not learnable and config.precision == "fp32"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    shuffle = torch.Generator().manual_seed(config.seed)
    target = torch.arange(b, device=device)  # row i of a batch matches column i
    history = []
    with progress("steps") as bar:
        task = bar.add_task("fit-head", total=steps * config.epochs)
        for epoch in range(config.epochs):
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            for x, en in data.epoch(b, shuffle):
                if by_hand:
                    loss, logits = linear_grad(module.weight, x, en, scale0)
                else:
                    with autocast:
                        scale = log_scale.exp() if learnable else scale0
                        logits = scale * F.normalize(module(x), dim=-1) @ en.t()
                    loss = clip_loss(logits.float())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == target).sum()
                bar.advance(task)
            sched.step()
            history.append({"epoch": epoch + 1, "loss": loss_sum.item() / steps, "accuracy": correct.item() / (steps * b)})
            bar.update(task, description=f"fit-head epoch {epoch + 1} loss {history[-1]['loss']:.4f}")
    meta = {
        "expclip_version": __version__,
        "kind": config.head, "d": d, "dt": dt,
        "clip_key": selection.clip_key, "clip": selection.clip,
        "teacher_key": selection.teacher_key, "teacher": selection.teacher_provenance,
        "teacher_model": str(selection.teacher_provenance.get("model", "")),
        "instruction_key": selection.instruction_key, "instruction": str(selection.teacher_provenance.get("instruction", "")),
        "config": {**asdict(config), "milestones": list(config.milestones),
                   "init_from": str(config.init_from) if config.init_from else None},
        "seed": config.seed,
        "logit_scale": float(log_scale.detach().exp()) if learnable else scale0,
        "device": str(device), "gradient": "by-hand" if by_hand else "autograd",
        "caches": selection.used, "n_train": n, "steps_per_epoch": steps, **data.describe(),
        "history": history, "wall_seconds": round(time.perf_counter() - started, 3),
    }
    save_head(module.cpu(), config.head, meta, out)
    return meta
