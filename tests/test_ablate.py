"""`expclip ablate`: grid parsing, one fit + evaluate per point, runs reused by key."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KEY, clip_attrs
from typer.testing import CliRunner

from expclip import ablate
from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.evaluate import evaluate
from expclip.stages.fit_head import FitConfig, fit_head
from expclip.stages.shared import protocol
from expclip.stages.shared.heads import load_head

CLIP = clip_attrs(embed_dim=8)
runner = CliRunner()


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A training cache (image + two instructions' teacher features) and a labelled eval cache."""
    folder = tmp_path_factory.mktemp("ablate")
    rng = np.random.default_rng(0)
    n = 48
    items = fmt.Items(ids=[f"t{i}" for i in range(n)], labels=np.full(n, -1), class_names=[])
    image = rng.standard_normal((n, 8)).astype(np.float32)
    teacher = {
        fmt.teacher_path("tiny-t5", k): (
            rng.standard_normal((n, 12)).astype(np.float32),
            {"model": "t5", "instruction": k},
        )
        for k in ("paper", "sha-0123456789")
    }
    train = folder / "train.h5"
    write_arrays(train, items, file_attrs={"dataset": "train"}, aligned={fmt.image_path(KEY): (image, CLIP), **teacher})
    names = protocol.class_order()[:3]
    labels = rng.integers(0, 3, 30)
    eval_items = fmt.Items(ids=[f"e{i}" for i in range(30)], labels=labels, class_names=names)
    order = protocol.class_order()
    text = {
        fmt.text_path(KEY, "class_name"): (
            rng.standard_normal((11, 8)).astype(np.float32),
            {"prompts": [c.lower() + "." for c in order], "class_names": order, "class_index": list(range(11))},
        )
    }
    evals = folder / "eval.h5"
    write_arrays(evals, eval_items, file_attrs={"dataset": "toy-eval"},
                 aligned={fmt.image_path(KEY): (rng.standard_normal((30, 8)).astype(np.float32), CLIP)}, small=text)
    return train, evals


def test_parse_grid_types_and_errors():
    grid = ablate.parse_grid(
        "lr=1e-3,1e-2 epochs=5,10 head=linear,mlp instruction=paper,sha-0123456789 logit-scale=learnable,50"
    )
    assert grid == {"lr": [1e-3, 1e-2], "epochs": [5, 10], "head": ["linear", "mlp"],
                    "instruction": ["paper", "sha-0123456789"], "logit_scale": ["learnable", 50.0]}
    with pytest.raises(ExpclipError, match="unknown name 'lrr'; choose from lr, momentum"):
        ablate.parse_grid("lrr=1")
    with pytest.raises(ExpclipError, match="epochs='five' is not int"):
        ablate.parse_grid("epochs=five")
    with pytest.raises(ExpclipError, match="lr='fast' is not float"):
        ablate.parse_grid("lr=fast")


def test_grid_values_take_their_field_type():
    """"3" becomes an int for int fields, a float for float fields, and stays text for text fields (whether
    3 is in the field's range is parse_grid's next question, tested below)."""
    expected = {  # written out, not read from FitConfig's annotations: a changed field type must show here
        "lr": float, "momentum": float, "weight_decay": float, "gamma": float, "logit_scale": float,
        "batch_size": int, "epochs": int, "seed": int,
        "optimizer": str, "head": str, "precision": str, "max_memory": str,
        "instruction": str, "teacher_key": str, "clip_key": str,
    }
    assert set(ablate.GRID_NAMES) == set(expected)
    for name, kind in expected.items():
        value = ablate._convert(name, "3")
        assert type(value) is kind and value == kind("3"), (name, value)
    assert ablate.parse_grid("seed=1,2 optimizer=sgd precision=bf16") == {
        "seed": [1, 2], "optimizer": ["sgd"], "precision": ["bf16"]}
    with pytest.raises(ExpclipError, match="is not NAME=V1,V2"):
        ablate.parse_grid("lr")


@pytest.mark.parametrize("grid, message", [
    ("lr=1e-2,nan", "--grid: lr: nan is not a finite number > 0"),
    ("lr=inf", "--grid: lr: inf is not a finite number > 0"),
    ("momentum=-0.5", "--grid: momentum: -0.5 is not a number in [0, 1)"),
    ("weight_decay=-1", "--grid: weight_decay: -1.0 is not a finite number >= 0"),
    ("gamma=0", "--grid: gamma: 0.0 is not a finite number > 0"),
    ("logit_scale=learnable,-5", "--grid: logit_scale: -5.0 is not a finite number > 0 or 'learnable'"),
    ("batch_size=1", "--grid: batch_size: 1 is not an integer >= 2"),
    ("optimizer=adam", "--grid: optimizer: 'adam' is not one of sgd, adamw"),
])
def test_grid_values_are_checked_by_fit_heads_rule_before_any_work(caches, tmp_path, grid, message):
    """Negative momentum once ended in a traceback, NaN in an all-NaN head: one line, before any folder."""
    train, evals = caches
    result = runner.invoke(app, ["ablate", str(train), "--eval", str(evals), "--grid", grid,
                                 "--out-dir", str(tmp_path / "never"), "--device", "cpu"])
    assert result.exit_code == 2 and " ".join(result.output.split()) == f"error: {message}", result.output
    assert not (tmp_path / "never").exists()


def test_run_grid_checks_every_point_before_the_first_trains(caches, tmp_path):
    train, evals = caches
    grid = {"lr": [1e-2, float("nan")]}  # as an API caller may pass it, not through parse_grid
    with pytest.raises(ExpclipError, match=r"^--lr: nan is not a finite number > 0$"):
        ablate.run_grid([train], [evals], grid, tmp_path / "abl", base=FitConfig(batch_size=16, epochs=1, device="cpu"),
                        select={"instruction": "paper"})
    assert not (tmp_path / "abl").exists()  # not even the first point trained


def test_a_diverging_grid_point_stops_the_grid_in_one_line(caches, tmp_path):
    train, evals = caches
    result = runner.invoke(app, ["ablate", str(train), "--eval", str(evals), "--grid", "lr=1e-2,1e38 batch_size=16",
                                 "--out-dir", str(tmp_path / "abl"), "--device", "cpu", "--instruction", "paper"])
    assert result.exit_code == 2, result.output
    [line] = [" ".join(x.split()) for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith("error: fit-head: the training loss became NaN or infinite at epoch 1, step ")
    assert line.endswith("(--lr 1e+38, --momentum 0.9, --weight-decay 0.0001); no head written: try a smaller --lr")
    assert not list((tmp_path / "abl" / "runs").iterdir())  # the pair trained together: neither is kept
    assert not (tmp_path / "abl" / "heads").exists()


def test_grid_runs_equal_direct_fit_and_evaluate_and_are_reused(caches, tmp_path, monkeypatch):
    train, evals = caches
    grid = ablate.parse_grid("lr=1e-2,1e-1 instruction=paper,sha-0123456789")
    base = FitConfig(batch_size=16, epochs=2, device="cpu")
    runs = ablate.run_grid([train], [evals], grid, tmp_path / "abl", base=base)
    assert len(runs) == 4 and not any(r["reused"] for r in runs)
    assert [r["grid"] for r in runs] == [
        {"lr": a, "instruction": b} for a in (1e-2, 1e-1) for b in ("paper", "sha-0123456789")
    ]
    direct = tmp_path / "direct"
    fit_head([train], direct, FitConfig(batch_size=16, epochs=2, device="cpu", lr=1e-1), instruction="sha-0123456789")
    expected = evaluate(load_head(direct), [evals])
    assert [(r["uar"], r["war"]) for r in runs[3]["records"]] == [(r["uar"], r["war"]) for r in expected]
    assert len({r["key"] for r in runs}) == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ablate, "fit_heads", no_training)
    again = ablate.run_grid(
        [train], [evals], ablate.parse_grid("lr=1e-1 instruction=sha-0123456789"), tmp_path / "abl", base=base
    )
    assert again[0]["reused"] and again[0]["records"] == runs[3]["records"]
    rows = ablate.rows(runs)
    assert len(rows) == 4 and {r["dataset"] for r in rows} == {"toy-eval"}


def test_configurations_sharing_the_data_order_train_together_and_each_equals_its_head_alone(caches, tmp_path):
    """lr x weight decay x logit scale: 8 heads in one pass; every head bit for bit the head fit-head trains alone.
    An mlp head (no hand-written gradient) trains alone."""
    train, evals = caches
    grid = ablate.parse_grid("lr=1e-2,1e-1 weight_decay=0,1e-2 logit_scale=20,50")
    base = FitConfig(batch_size=16, epochs=3, milestones=(2,), device="cpu")
    runs = ablate.run_grid([train], [evals], grid, tmp_path / "abl", base=base, select={"instruction": "paper"})
    assert [r["trained_together"] for r in runs] == [8] * 8
    for run in runs[::3]:
        alone = tmp_path / f"alone-{run['key']}"
        config = dataclasses.replace(base, **run["grid"])
        fit_head([train], alone, config, instruction="paper")
        assert torch.equal(load_head(Path(run["head"])).module.weight, load_head(alone).module.weight), run["grid"]
        assert (
            json.loads(Path(run["head"] + ".json").read_text())["history"]
            == json.loads(alone.with_suffix(".json").read_text())["history"]
        )
    mixed = ablate.run_grid(
        [train],
        [evals],
        ablate.parse_grid("head=linear,mlp lr=0.5"),
        tmp_path / "mixed",
        base=base,
        select={"instruction": "paper"},
    )
    assert [r["trained_together"] for r in mixed] == [1, 1]


def test_ablate_cli_writes_table_csv_and_json(caches, tmp_path):
    train, evals = caches
    out = tmp_path / "abl"
    args = [
        "ablate",
        str(train),
        "--eval",
        str(evals),
        "--grid",
        "epochs=1,2 batch_size=16",
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--instruction",
        "paper",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 runs (0 reused)" in result.output and "toy-eval" in result.output
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["epochs"] for r in rows] == [1, 2]
    header = (out / "ablation.csv").read_text().splitlines()[0]
    assert header == "epochs,batch_size,run,dataset,prompt_set,uar,war,n,reused"
    assert "2 runs (2 reused)" in runner.invoke(app, args).output
    bad = runner.invoke(app, [*args[:4], "--grid", "speed=1", "--out-dir", str(tmp_path / "never")])
    assert bad.exit_code == 2 and "unknown name 'speed'" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "never").exists()  # arguments checked before any folder is made


def test_ablate_label_map_reaches_evaluate(caches, tmp_path):
    train, _ = caches
    rng = np.random.default_rng(1)
    order = protocol.class_order()
    numeric = tmp_path / "numeric.h5"
    items = fmt.Items(ids=[f"e{i}" for i in range(12)], labels=np.arange(12) % 2, class_names=["0", "1"])
    text = {
        fmt.text_path(KEY, "class_name"): (
            rng.standard_normal((11, 8)).astype(np.float32),
            {"prompts": [c.lower() + "." for c in order], "class_names": order, "class_index": list(range(11))},
        )
    }
    write_arrays(numeric, items, file_attrs={"dataset": "numeric"},
                 aligned={fmt.image_path(KEY): (rng.standard_normal((12, 8)).astype(np.float32), CLIP)}, small=text)
    label_map = tmp_path / "map.csv"
    label_map.write_text("0,Neutral\n1,Happiness\n")
    args = [
        "ablate",
        str(train),
        "--eval",
        str(numeric),
        "--grid",
        "epochs=1 batch_size=16",
        "--out-dir",
        str(tmp_path / "a"),
        "--device",
        "cpu",
        "--instruction",
        "paper",
    ]
    without = runner.invoke(app, args)
    assert without.exit_code == 2 and "--label-map" in without.output
    result = runner.invoke(app, [*args, "--label-map", str(label_map)])
    assert result.exit_code == 0, result.output
    [row] = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert row["dataset"] == "numeric" and row["n"] == 12


def test_re_extracting_with_other_labels_at_the_same_path_recomputes(caches, tmp_path):
    """Same ids and features, class names swapped: the cache's identity changes, so no stale run is reused."""
    train, _ = caches
    rng = np.random.default_rng(2)
    order = protocol.class_order()
    image = rng.standard_normal((20, 8)).astype(np.float32)
    text = {
        fmt.text_path(KEY, "class_name"): (
            rng.standard_normal((11, 8)).astype(np.float32),
            {"prompts": [c.lower() + "." for c in order], "class_names": order, "class_index": list(range(11))},
        )
    }
    evals = tmp_path / "eval.h5"

    def extract(class_names: list[str]) -> None:
        evals.unlink(missing_ok=True)
        items = fmt.Items(ids=[f"e{i}" for i in range(20)], labels=np.arange(20) % 2, class_names=class_names)
        write_arrays(
            evals, items, file_attrs={"dataset": "relabelled"}, aligned={fmt.image_path(KEY): (image, CLIP)}, small=text
        )

    grid = ablate.parse_grid("epochs=1 batch_size=16")
    extract(["happy", "sad"])
    [first] = ablate.run_grid([train], [evals], grid, tmp_path / "abl", select={"instruction": "paper"})
    extract(["sad", "happy"])
    [second] = ablate.run_grid([train], [evals], grid, tmp_path / "abl", select={"instruction": "paper"})
    assert not second["reused"] and second["key"] != first["key"]
    recall = lambda run: run["records"][0]["per_class"]  # noqa: E731
    # The items of each label now count as the other class; with two classes scored, recall flips to 100 - recall.
    assert recall(second) == pytest.approx(
        {"Happiness": 100 - recall(first)["Sadness"], "Sadness": 100 - recall(first)["Happiness"]}
    )
    [third] = ablate.run_grid([train], [evals], grid, tmp_path / "abl", select={"instruction": "paper"})
    assert third["reused"] and third["key"] == second["key"]


def test_grid_over_teacher_keys_compares_teachers_of_one_cache(caches, tmp_path):
    """One cache holding two teachers (other widths, as T5 and OPT have): one run per teacher, each as fit alone."""
    _, evals = caches
    rng = np.random.default_rng(3)
    n = 32
    items = fmt.Items(ids=[f"t{i}" for i in range(n)], labels=np.full(n, -1), class_names=[])
    teachers = {
        fmt.teacher_path("blip2-t5", "paper"): (
            rng.standard_normal((n, 12)).astype(np.float32),
            {"model": "t5", "instruction": "x"},
        ),
        fmt.teacher_path("blip2-opt", "paper"): (
            rng.standard_normal((n, 10)).astype(np.float32),
            {"model": "opt", "instruction": "x"},
        ),
    }
    train = tmp_path / "two-teachers.h5"
    write_arrays(train, items, file_attrs={"dataset": "train"},
                 aligned={fmt.image_path(KEY): (rng.standard_normal((n, 8)).astype(np.float32), CLIP), **teachers})
    args = [
        "ablate",
        str(train),
        "--eval",
        str(evals),
        "--grid",
        "teacher_key=blip2-t5,blip2-opt epochs=1 batch_size=16",
        "--out-dir",
        str(tmp_path / "abl"),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [r["teacher_key"] for r in rows] == ["blip2-t5", "blip2-opt"]
    for row, dt in zip(rows, (12, 10)):
        head = load_head(tmp_path / "abl" / "heads" / row["run"])
        alone = fit_head([train], tmp_path / row["teacher_key"], FitConfig(epochs=1, batch_size=16, device="cpu"),
                         teacher_key=row["teacher_key"])
        assert head.dt == dt and head.meta["teacher_key"] == row["teacher_key"] == alone["teacher_key"]
        assert torch.equal(head.linear_weight(), load_head(tmp_path / row["teacher_key"]).linear_weight())
