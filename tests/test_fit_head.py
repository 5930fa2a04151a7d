"""fit-head: equals an independent autograd + torch.optim.SGD reference, is deterministic, and says what it used."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.base.settings import as_json
from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.shared.heads import build_head, load_head, save_head

D, DT = 16, 24
INSTRUCTION = "Please describe the face."
runner = CliRunner()


def make_cache(path: Path, n: int = 64, *, seed: int = 0, logit_scale: float = 50.0, bad_rows=(),
               image_keys=("ViT-T@tiny",), instructions=(("paper", INSTRUCTION),), kind: str = "images") -> Path:
    """A cache of random float16 features; `bad_rows` are NaN with items/ok False (as extract leaves them)."""
    rng = np.random.default_rng(seed)
    items = fmt.Items(
        ids=[f"img{i}.png" for i in range(n)], labels=np.zeros(n, dtype=np.int64), class_names=["Happiness"]
    )
    if kind == "clips":
        items.frame_index, items.num_frames = np.zeros((n, 2), dtype=np.int32), np.ones(n, dtype=np.int32)
    shape = (n, 2) if kind == "clips" else (n,)
    aligned = {}
    for key in image_keys:
        rows = rng.standard_normal((*shape, D)).astype(np.float32)
        rows[list(bad_rows)] = np.nan
        aligned[fmt.image_path(key)] = (rows, {"model": key.split("@")[0], "pretrained": "random", "transform": "model",
                                              "logit_scale": logit_scale, "embed_dim": D})
    for ikey, text in instructions:
        rows = rng.standard_normal((n, DT)).astype(np.float32)
        rows[list(bad_rows)] = np.nan
        aligned[fmt.teacher_path("tiny-t5", ikey)] = (rows, {"model": "tiny-t5", "instruction": text})
    write_arrays(path, items, file_attrs={"dataset": path.stem, "source": "synthetic"}, aligned=aligned,
                 failures={i: "not an image" for i in bad_rows})  # NaN rows recorded as extract records them
    return path


def features(path: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(images, teacher, logit_scale) of a one-key cache, usable rows only, read plainly."""
    with CacheReader(path) as r:
        ok = r.items().ok
        x = torch.from_numpy(r.image(r.image_keys()[0])[ok].astype(np.float32))
        e = torch.from_numpy(r.teacher(*r.teacher_keys()[0])[ok].astype(np.float32))
        return x, e, float(r.image_attrs(r.image_keys()[0])["logit_scale"])


def reference_sgd(w0: torch.Tensor, x: torch.Tensor, e: torch.Tensor, scale: float, steps: int, **sgd) -> torch.Tensor:
    """The loss written out plainly, differentiated by autograd, stepped by torch.optim.SGD (one full batch)."""
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([w], **sgd)
    target = torch.arange(len(x))
    for _ in range(steps):
        logits = scale * F.normalize(x @ w.t(), dim=-1) @ F.normalize(e, dim=-1).t()
        loss = 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.t(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("logit_scale", [None, 7.5])
def test_equals_independent_autograd_sgd(tmp_path, logit_scale):
    """One full batch from W0: k epochs = k SGD steps of the reference (cache logit_scale 50, a NaN row skipped)."""
    cache = make_cache(tmp_path / "train.h5", n=65, bad_rows=(3,), logit_scale=50.0)
    x, e, cache_scale = features(cache)
    assert len(x) == 64 and cache_scale == 50.0
    w0 = build_head("linear", D, DT)
    save_head(w0, "linear", {}, tmp_path / "w0")
    hp = dict(lr=0.5, momentum=0.9, weight_decay=1e-2)
    cfg = FitConfig(**hp, batch_size=64, epochs=3, init_from=tmp_path / "w0", logit_scale=logit_scale, device="cpu")
    meta = fit_head([cache], tmp_path / "head", cfg)
    got = load_head(tmp_path / "head").linear_weight()
    want = reference_sgd(w0.weight.detach(), x, e, logit_scale or 50.0, 3, **hp)
    assert meta["gradient"] == "by-hand" and meta["n_train"] == 64 and meta["logit_scale"] == (logit_scale or 50.0)
    assert (want - w0.weight).abs().max() > 1e-2  # the steps moved the head far beyond the tolerance
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def test_mini_batches_with_drop_last_and_a_milestone_equal_autograd_sgd(tmp_path):
    """3 epochs of 4 shuffled batches (6 rows dropped each epoch), lr ×0.1 after epoch 2, as a plain loop.

    The documented order: one torch.randperm(n) per epoch from a generator seeded with `seed`;
    batch s is rows order[s·B:(s+1)·B]; the last n mod B rows are dropped; the learning rate of
    epoch e is lr·gamma^(milestones ≤ e). The reference sets that rate by hand (no MultiStepLR).
    """
    cache = make_cache(tmp_path / "train.h5", n=70)
    x, e, scale = features(cache)
    w0 = build_head("linear", D, DT)
    save_head(w0, "linear", {}, tmp_path / "w0")
    b, epochs, milestone, lr, gamma, seed = 16, 3, 2, 0.5, 0.1, 7
    cfg = FitConfig(lr=lr, momentum=0.9, weight_decay=1e-3, batch_size=b, epochs=epochs, milestones=(milestone,),
                    gamma=gamma, seed=seed, init_from=tmp_path / "w0", device="cpu")
    meta = fit_head([cache], tmp_path / "head", cfg)

    w = torch.nn.Parameter(w0.weight.detach().clone())
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9, weight_decay=1e-3)
    order_source = torch.Generator().manual_seed(seed)
    target = torch.arange(b)
    losses = []
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (gamma if epoch >= milestone else 1.0)
        order = torch.randperm(len(x), generator=order_source)
        total = 0.0
        for step in range(len(x) // b):
            rows = order[step * b:(step + 1) * b]
            logits = scale * F.normalize(x[rows] @ w.t(), dim=-1) @ F.normalize(e[rows], dim=-1).t()
            loss = 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.t(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / (len(x) // b))
    assert meta["steps_per_epoch"] == 4 and meta["gradient"] == "by-hand"
    assert [h["loss"] for h in meta["history"]] == pytest.approx(losses, rel=1e-5)
    # 12 momentum steps of float32 round-off (measured up to 2.6e-6 under load); the steps move the head 1000x more.
    torch.testing.assert_close(load_head(tmp_path / "head").linear_weight(), w.detach(), rtol=1e-5, atol=1e-5)
    assert (w.detach() - w0.weight).abs().max() > 1e-2


def test_autograd_path_equals_reference_too(tmp_path):
    """The general (autograd) path, here with an MLP head, equals a plain loop from the same seeded init."""
    cache = make_cache(tmp_path / "train.h5", n=32)
    x, e, scale = features(cache)
    cfg = FitConfig(lr=0.2, batch_size=32, epochs=2, head="mlp", device="cpu")
    meta = fit_head([cache], tmp_path / "head", cfg)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mlp = build_head("mlp", D, DT)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    losses = []
    target = torch.arange(32)
    for _ in range(2):
        logits = scale * F.normalize(mlp(x), dim=-1) @ F.normalize(e, dim=-1).t()
        loss = 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.t(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert meta["gradient"] == "autograd"
    assert [h["loss"] for h in meta["history"]] == pytest.approx(losses, rel=1e-5)
    for a, b in zip(load_head(tmp_path / "head").module.state_dict().values(), mlp.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_same_seed_is_bit_identical(tmp_path):
    cache = make_cache(tmp_path / "train.h5", n=100)
    cfg = FitConfig(lr=0.1, batch_size=16, epochs=2, device="cpu")
    runs = [fit_head([cache], tmp_path / f"h{i}", cfg) for i in range(2)]
    a, b = (load_head(tmp_path / f"h{i}").linear_weight() for i in range(2))
    assert torch.equal(a, b) and runs[0]["history"] == runs[1]["history"]
    fit_head([cache], tmp_path / "other", FitConfig(lr=0.1, batch_size=16, epochs=2, seed=1, device="cpu"))
    assert not torch.equal(a, load_head(tmp_path / "other").linear_weight())


def test_head_json_records_provenance(tmp_path):
    caches = [make_cache(tmp_path / "a.h5", n=40, seed=1), make_cache(tmp_path / "b.h5", n=30, seed=2)]
    meta = fit_head(caches, tmp_path / "head.safetensors", FitConfig(batch_size=16, epochs=2, device="cpu"))
    card = json.loads((tmp_path / "head.json").read_text())
    own, weights = card.pop("card_sha256"), card.pop("weights_sha256")
    assert weights == hashlib.sha256((tmp_path / "head.safetensors").read_bytes()).hexdigest()
    canonical = json.dumps({**card, "weights_sha256": weights}, sort_keys=True, separators=(",", ":"))
    assert own == hashlib.sha256(canonical.encode()).hexdigest()
    assert card == meta
    assert (card["clip_key"], card["teacher_key"], card["instruction_key"]) == ("ViT-T@tiny", "tiny-t5", "paper")
    assert card["instruction"] == INSTRUCTION and card["teacher_model"] == "tiny-t5"
    assert card["teacher"] == {"model": "tiny-t5", "instruction": INSTRUCTION}  # the teacher group's attributes, whole
    assert card["clip"]["logit_scale"] == 50.0 and card["clip"]["model"] == "ViT-T"
    assert (card["n_train"], card["steps_per_epoch"], card["d"], card["dt"], card["kind"]) == (70, 4, D, DT, "linear")
    assert [c["rows"] for c in card["caches"]] == [40, 30] and all(len(c["fingerprint"]) == 64 for c in card["caches"])
    assert card["config"]["lr"] == 1e-3 and card["config"]["milestones"] == [30] and card["seed"] == 0
    assert [h["epoch"] for h in card["history"]] == [1, 2] and all(0 <= h["accuracy"] <= 1 for h in card["history"])
    assert 0 < card["read_seconds"] < card["wall_seconds"] and card["expclip_version"]


def test_config_becomes_json_by_one_rule():
    """HEAD.json records it, `run` compares it with a head's, ablation keys runs by it: plain JSON values."""
    config = FitConfig(milestones=(3, 7), init_from=Path("heads") / "h.json", logit_scale="learnable")
    recorded = as_json(config)
    assert recorded == {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 512, "epochs": 5,
                        "milestones": [3, 7], "gamma": 0.1, "seed": 0, "optimizer": "sgd", "head": "linear",
                        "logit_scale": "learnable", "init_from": "heads/h.json", "device": "auto",
                        "precision": "fp32", "max_memory": None}
    assert json.loads(json.dumps(recorded)) == recorded


def test_choices_are_listed_when_ambiguous(tmp_path):
    cache = make_cache(tmp_path / "two.h5", n=16, image_keys=("A@x", "B@y"),
                       instructions=(("paper", INSTRUCTION), ("sha-0123456789", "Describe the mouth.")))
    cfg = FitConfig(batch_size=8, epochs=1, device="cpu")
    with pytest.raises(ExpclipError, match=r"several CLIP image keys; choose one with --clip-key: A@x, B@y"):
        fit_head([cache], tmp_path / "h", cfg)
    with pytest.raises(
        ExpclipError, match=r"several instructions; choose one with --instruction: paper, sha-0123456789"
    ):
        fit_head([cache], tmp_path / "h", cfg, clip_key="A@x")
    with pytest.raises(ExpclipError, match=r"--clip-key: .*two\.h5 has no CLIP image key 'C@z'; it has: A@x, B@y"):
        fit_head([cache], tmp_path / "h", cfg, clip_key="C@z")
    meta = fit_head([cache], tmp_path / "h", cfg, clip_key="B@y", instruction="Describe the mouth.")  # full text
    assert (meta["clip_key"], meta["instruction_key"]) == ("B@y", "sha-0123456789")


def test_refuses_clips_and_mismatched_caches(tmp_path):
    cfg = FitConfig(batch_size=8, epochs=1, device="cpu")
    with pytest.raises(ExpclipError, match=r"clips\.h5: holds clips; fit-head trains on image caches only"):
        fit_head([make_cache(tmp_path / "clips.h5", n=8, kind="clips")], tmp_path / "h", cfg)
    a, b = make_cache(tmp_path / "a.h5", n=8), make_cache(tmp_path / "b.h5", n=8, logit_scale=100.0)
    with pytest.raises(ExpclipError, match=r"b\.h5: logit_scale 100.0 differs"):
        fit_head([a, b], tmp_path / "h", cfg)
    with pytest.raises(ExpclipError, match=r"--batch-size 16: larger than the 8 usable rows"):
        fit_head([a], tmp_path / "h", FitConfig(batch_size=16, device="cpu"))


def test_other_configurations_train(tmp_path):
    cache = make_cache(tmp_path / "t.h5", n=64)
    for cfg in (FitConfig(optimizer="adamw", lr=1e-2, batch_size=32, epochs=3, device="cpu"),
                FitConfig(logit_scale="learnable", lr=0.5, batch_size=32, epochs=3, device="cpu"),
                FitConfig(head="mlp", precision="bf16", lr=0.5, batch_size=32, epochs=3, device="cpu")):
        meta = fit_head([cache], tmp_path / "h", cfg)
        assert meta["gradient"] == "autograd" and meta["history"][-1]["loss"] < meta["history"][0]["loss"]


def test_bf16_products_in_the_hand_written_gradient_stay_close_to_fp32(tmp_path):
    """--precision bf16 on the paper's head rounds the four GEMMs' inputs only: its gradient is within bf16's
    rounding of the fp32 one, and training follows the fp32 run closely."""
    from expclip.stages.fit_head.train import linear_grad

    x, e, scale = features(make_cache(tmp_path / "g.h5", n=64))
    en = F.normalize(e, dim=-1)
    w = torch.randn(DT, D) * 0.1
    s = torch.tensor(scale)
    loss32, _, g32 = linear_grad(w, x, en, s)
    loss16, _, g16 = linear_grad(w, x, en, s, torch.bfloat16)
    assert g16.dtype == torch.float32 and not torch.equal(g16, g32)
    assert (g16 - g32).norm() / g32.norm() < 2e-2 and abs(loss16 - loss32) / loss32 < 1e-2
    cache = make_cache(tmp_path / "t.h5", n=64)
    base = dict(lr=0.5, batch_size=32, epochs=3, device="cpu")
    full, half = (fit_head([cache], tmp_path / p, FitConfig(precision=p, **base)) for p in ("fp32", "bf16"))
    assert half["gradient"] == "by-hand"
    for a, b in zip(full["history"], half["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 1e-2


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch):
    monkeypatch.setattr("expclip.stages.fit_head.train.native_bf16", lambda device: False)
    cache = make_cache(tmp_path / "t.h5", n=64)
    result = runner.invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "h"), "--device", "cpu",
                                 "--precision", "bf16", "--batch-size", "32", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert (
        "warning: this CPU has no native bf16 (avx512_bf16 or AMX): --precision bf16 runs slower than fp32 here"
        in result.output
    )


def test_tf32_is_refused_off_cuda_in_one_line(tmp_path):
    """TF32 is a CUDA feature: on the CPU the run stops, naming what to use, and leaves the global setting alone."""
    cache = make_cache(tmp_path / "t.h5", n=64)
    result = runner.invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "h"), "--device", "cpu",
                                 "--precision", "tf32", "--batch-size", "32", "--epochs", "1"])
    assert result.exit_code == 2 and not (tmp_path / "h.json").exists()
    assert _plain(result.output) == ("error: --precision tf32: TensorFloat-32 products are a CUDA feature; "
                                     "on the CPU use fp32 (exact) or bf16")
    assert torch.get_float32_matmul_precision() == "highest"


def _plain(text: str) -> str:
    return " ".join(text.split())


def test_cli_fit_head_and_export(tmp_path):
    cache = make_cache(tmp_path / "train.h5", n=40)
    runner = CliRunner()
    result = runner.invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "head"), "--batch-size", "16",
                                 "--epochs", "2", "--milestones", "1", "--device", "cpu", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "head.safetensors").is_file() and (tmp_path / "head.json").is_file()
    assert "head.safetensors" in result.output and "loss" in result.output
    assert json.loads((tmp_path / "head.json").read_text())["config"]["milestones"] == [1]
    result = runner.invoke(
        app, ["head", "export", str(tmp_path / "head"), "--format", "official", "--out", str(tmp_path / "h.pth")]
    )
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "h.pth", weights_only=True)["mlp.weight"].shape == (DT, D)


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "adam"], "Invalid value for '--optimizer': 'adam' is not one of sgd, adamw"),
    (["--milestones", "3,x"], "--milestones: '3,x' is not a comma list"),
    (["--logit-scale", "big"], "--logit-scale: 'big' is neither a number nor 'learnable'"),
    (["--init-from", "missing-head"], "no head weights"),
])
def test_cli_bad_option(tmp_path, args, message):
    cache = make_cache(tmp_path / "train.h5", n=8)
    result = CliRunner().invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "h"), "--batch-size", "4", *args])
    assert result.exit_code == 2
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # typer's errors come boxed
    assert message in text and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr: nan is not a finite number > 0"),
    (["--lr", "inf"], "--lr: inf is not a finite number > 0"),
    (["--lr", "0"], "--lr: 0.0 is not a finite number > 0"),
    (["--momentum", "-0.5"], "--momentum: -0.5 is not a number in [0, 1)"),
    (["--momentum", "1"], "--momentum: 1.0 is not a number in [0, 1)"),
    (["--weight-decay", "-1e-4"], "--weight-decay: -0.0001 is not a finite number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay: nan is not a finite number >= 0"),
    (["--gamma", "0"], "--gamma: 0.0 is not a finite number > 0"),
    (["--gamma", "-inf"], "--gamma: -inf is not a finite number > 0"),
    (["--milestones", "3,2"], "--milestones: (3, 2) is not epochs > 0 in increasing order"),
    (["--milestones", "2,2"], "--milestones: (2, 2) is not epochs > 0 in increasing order"),
    (["--milestones", "0"], "--milestones: (0,) is not epochs > 0 in increasing order"),
    (["--logit-scale", "nan"], "--logit-scale: nan is not a finite number > 0 or 'learnable'"),
    (["--logit-scale", "-5"], "--logit-scale: -5.0 is not a finite number > 0 or 'learnable'"),
    (["--seed", "-1"], "--seed: -1 is not an integer from 0 to 2**64 - 1"),
    (["--seed", str(2**64)], f"--seed: {2**64} is not an integer from 0 to 2**64 - 1"),
    (["--max-memory", "0.1B"], "--max-memory '0.1B': write a size such as 1GB, 512MB or 2GiB"),
])
def test_cli_numeric_options_are_checked_before_any_work(tmp_path, args, message):
    """NaN once trained an all-NaN head and wrote `"lr": NaN` (not JSON); negative momentum ended in a traceback."""
    cache = make_cache(tmp_path / "train.h5", n=8)
    result = runner.invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "heads" / "h"), "--batch-size", "4",
                                 "--device", "cpu", *args])
    assert result.exit_code == 2 and _plain(result.output) == f"error: {message}", result.output
    assert not (tmp_path / "heads").exists()  # refused before even the output folder was made
    with pytest.raises(ExpclipError, match=r"^--lr: nan is not a finite number > 0$"):  # the API: the same rule
        fit_head([cache], tmp_path / "h", FitConfig(lr=float("nan"), batch_size=4, device="cpu"))


def first_non_finite_step(x: torch.Tensor, e: torch.Tensor, scale: float, w0: torch.Tensor, lr: float, b: int,
                          seed: int, epochs: int) -> tuple[int, int] | None:
    """(epoch, step), counted from 1, of the first non-finite loss of the documented loop (plain SGD, momentum 0.9,
    weight decay 1e-4, one randperm per epoch), or None."""
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9, weight_decay=1e-4)
    order_source = torch.Generator().manual_seed(seed)
    target = torch.arange(b)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=order_source)
        for step in range(len(x) // b):
            rows = order[step * b:(step + 1) * b]
            logits = scale * F.normalize(x[rows] @ w.t(), dim=-1) @ F.normalize(e[rows], dim=-1).t()
            loss = 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.t(), target)
            if not torch.isfinite(loss):
                return epoch + 1, step + 1
            opt.zero_grad()
            loss.backward()
            opt.step()
    return None


@pytest.mark.parametrize("lr", [1e30, 1e38])
def test_a_diverging_training_stops_naming_epoch_and_step_and_writes_no_head(tmp_path, lr):
    cache = make_cache(tmp_path / "train.h5", n=64)
    x, e, scale = features(cache)
    w0 = build_head("linear", D, DT)
    save_head(w0, "linear", {}, tmp_path / "w0")
    where = first_non_finite_step(x, e, scale, w0.weight.detach(), lr, 16, 0, 3)
    assert where is not None
    out = tmp_path / "out"
    result = runner.invoke(app, ["fit-head", str(cache), "--out", str(out / "h"), "--batch-size", "16", "--epochs", "3",
                                 "--lr", str(lr), "--init-from", str(tmp_path / "w0"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert [_plain(line) for line in lines] == [
        f"error: fit-head: the training loss became NaN or infinite at epoch {where[0]}, step {where[1]} "
        f"(--lr {lr}, --momentum 0.9, --weight-decay 0.0001); no head written: try a smaller --lr"]
    assert list(out.iterdir()) == []  # no head, no temporary file
