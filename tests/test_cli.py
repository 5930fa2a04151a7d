"""The CLI only dispatches: its defaults and choices are the configs' own, checked by typer, shown in --help."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cli import app
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.extract.sources import Source
from expclip.stages.fit_head.config import FitConfig

runner = CliRunner()


def _plain(text: str) -> str:
    """Help and errors without rich's boxes and wrapping."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("command, option, values", [
    ("extract", "--transform", "model|exp-clip-official"),
    ("extract", "--precision", "auto|fp32|bf16|fp8"),
    ("extract", "--clip-weights", "float32|bfloat16"),
    ("extract", "--compile", "auto|on|off"),
    ("extract", "--device", "auto|cpu|cuda|cuda:N|mps"),
    ("fit-head", "--device", "auto|cpu|cuda|cuda:N|mps"),
    ("extract", "--store-dtype", "float16|float32"),
    ("extract", "--source-type", "auto|folder|list|clips|shards"),
    ("fit-head", "--optimizer", "sgd|adamw"),
    ("fit-head", "--head", "linear|mlp"),
    ("fit-head", "--precision", "fp32|bf16|tf32"),
    ("evaluate", "--ensemble", "logits|embedding"),
    ("ablate", "--ensemble", "logits|embedding"),
    ("head export", "--format", "official"),
])
def test_fixed_value_options_list_their_choices_and_refuse_others(command, option, values):
    help_text = _plain(runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "250"}).output)
    assert f"{option} <{values}>" in help_text
    bad = runner.invoke(app, [*command.split(), option, "nope"])
    assert bad.exit_code == 2 and f"Invalid value for '{option}'" in _plain(bad.output)


def test_extract_passes_the_config_defaults(monkeypatch, tmp_path):
    """Every ExtractConfig field the command sets has the dataclass's default when no option is given."""
    seen = {}
    monkeypatch.setattr(
        "expclip.stages.extract.sources.resolve", lambda *a, **k: Source(None, [], "x", Path("."), Path("."))
    )

    def fake_extract(source, out, cfg):
        seen["cfg"] = cfg
        return {
            "cache": str(out),
            "rows": 0,
            "encoded_rows": 0,
            "failures": {},
            "loaded": [],
            "merged": False,
            "ignored_files": 0,
            "seconds": {},
            "rank": 0,
            "part": None,
        }

    monkeypatch.setattr("expclip.stages.extract.extraction.extract", fake_extract)
    result = runner.invoke(app, ["extract", str(tmp_path), "--out", str(tmp_path / "c.h5")])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == ExtractConfig()


def test_fit_head_passes_the_config_defaults(monkeypatch, tmp_path):
    seen = {}

    def fake_fit(caches, out, config, **select):
        seen["config"] = config
        return {
            "history": [{"epoch": 1, "loss": 0.0, "accuracy": 0.0}],
            "n_train": 0,
            "mode": "in-memory",
            "wall_seconds": 0.0,
        }

    monkeypatch.setattr("expclip.stages.fit_head.train.fit_head", fake_fit)
    (tmp_path / "c.h5").write_bytes(b"")
    result = runner.invoke(app, ["fit-head", str(tmp_path / "c.h5"), "--out", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert seen["config"] == FitConfig()
    assert {f.name for f in dataclasses.fields(FitConfig)} <= {p.replace("-", "_") for p in _option_names("fit-head")}


def _option_names(command: str) -> set[str]:
    return set(
        re.findall(r"--([a-z-]+)", _plain(runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output))
    )


def test_help_does_not_import_torch():
    """Configs and vocabularies are data: listing commands and options stays fast."""
    code = "import sys; from expclip.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["batch_size", "shard_size"])
def test_extract_sizes_below_one_are_refused_naming_the_option(name):
    option = {"batch_size": "--batch-size", "shard_size": "--shard-size"}[name]
    with pytest.raises(ExpclipError, match=f"^{option}: must be at least 1$"):
        ExtractConfig(**{name: 0}).check()


@pytest.mark.parametrize("command", ["evaluate", "ablate"])
def test_label_map_help_names_the_shipped_maps(command):
    """Read from the label_maps folder, not listed by hand: both maps the package ships (RAF-DB, AffectNet)."""
    import typer.main

    (option,) = [p for p in typer.main.get_command(app).commands[command].params if p.name == "label_map"]
    assert option.help.startswith("affectnet, rafdb, or a ")
