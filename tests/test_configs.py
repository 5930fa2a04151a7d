"""Every command's options come from its config: defaults reach the stage unchanged, shared options read the
same everywhere, and a choice is refused by one rule, in the same words for the CLI and for API callers."""

import re
from pathlib import Path

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cli import app
from expclip.run_config import RunConfig
from expclip.stages.audit import AuditConfig
from expclip.stages.evaluate import EvaluateConfig
from expclip.stages.extract.source_config import SourceConfig
from expclip.stages.fit_head.config import FitConfig
from expclip.stages.predict.config import PredictConfig
from expclip.stages.search import SearchConfig
from expclip.stages.shared.common_settings import CacheGroups

runner = CliRunner()
DEVICE_HELP = "auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:N (CUDA device N) or mps (Apple GPUs)."


def _params(command: str) -> dict:
    """Option name -> click parameter of a command ("cache export": a subcommand)."""
    found = typer.main.get_command(app)
    for word in command.split():
        found = found.commands[word]
    return {decl: p for p in found.params for decl in p.opts if decl.startswith("-")}


@pytest.mark.parametrize("command, config, options", [
    ("evaluate", EvaluateConfig,
     ["--baseline", "--prompt-set", "--ensemble", "--label-map", "--clip-key", "--device"]),
    ("search", SearchConfig, ["-k", "--exact", "--clip-key", "--device"]),
    ("audit", AuditConfig, ["--threshold", "--within", "--clip-key", "--device"]),
    ("predict", PredictConfig, ["--clip-model", "--clip-pretrained", "--classes", "--prompt-set", "--detector",
                                "--detector-model", "--every", "--frame-folders", "--fps", "--device", "--batch-size",
                                "--precision"]),
    ("run", RunConfig, ["--data-root", "--out", "--check", "--clip-model", "--clip-pretrained", "--teacher", "--fit",
                        "--device", "--batch-size", "--num-workers"]),
    ("extract", SourceConfig, ["--source-type", "--root", "--strip-prefix", "--frames", "--dataset", "--label-field"]),
    ("fit-head", FitConfig, ["--lr", "--momentum", "--weight-decay", "--batch-size", "--epochs", "--milestones",
                             "--gamma", "--seed", "--optimizer", "--head", "--logit-scale", "--init-from", "--device",
                             "--precision", "--max-memory"]),
    ("fit-head", CacheGroups, ["--clip-key", "--teacher-key", "--instruction"]),
    ("cache export", CacheGroups, ["--clip-key", "--teacher-key", "--instruction"]),
])
def test_each_config_field_is_one_option_with_the_fields_default_and_help(command, config, options):
    params = _params(command)
    fields = config.__dataclass_fields__
    assert len(fields) == len(options)
    for (name, field), option in zip(fields.items(), options, strict=True):
        param = params[option]
        assert param.name == name and param.help == field.metadata["help"]
        parse = field.metadata.get("parse")  # a comma list or number-or-word: typed, and defaulting, as text
        if parse and param.default is not None:
            assert isinstance(param.default, str) and parse(param.default) == field.default
        elif name != "data_root":  # the one required setting
            assert param.default == field.default


def test_shared_options_read_the_same_in_every_command():
    for command in ("evaluate", "ablate", "search", "audit", "predict", "run", "extract", "fit-head"):
        assert _params(command)["--device"].help.endswith(DEVICE_HELP), command
    for command in ("evaluate", "ablate", "search", "audit", "fit-head", "cache export"):
        assert _params(command)["--clip-key"].help == "Image key when a cache holds several CLIP encoders.", command
    for command in ("fit-head", "ablate", "cache export"):
        params = _params(command)
        assert params["--teacher-key"].help == "Teacher key when a cache holds several teachers.", command
        assert params["--instruction"].help == "Instruction key (e.g. paper) or full text, when several exist."
        assert params["--teacher-key"].default is params["--instruction"].default is None, command
    assert _params("evaluate")["--label-map"].help == _params("ablate")["--label-map"].help
    for command, what in [("evaluate", "the records"), ("search", "the hits"), ("audit", "counts and pairs"),
                          ("predict", "the records")]:
        assert _params(command)["--json"].help == f"Write {what} as JSON.", command


@pytest.mark.parametrize("command, option, values", [
    ("search", "--device", "auto|cpu|cuda|cuda:N|mps"),
    ("audit", "--device", "auto|cpu|cuda|cuda:N|mps"),
    ("predict", "--device", "auto|cpu|cuda|cuda:N|mps"),
    ("predict", "--detector", "haar|yunet|none"),
    ("run", "--device", "auto|cpu|cuda|cuda:N|mps"),
    ("extract", "--source-type", "auto|folder|list|clips|shards"),
])
def test_new_config_choices_are_listed_and_refused_as_they_are_parsed(command, option, values):
    help_text = " ".join(re.sub("[│╭╮╰╯─]", " ", runner.invoke(app, [command, "--help"],
                                                               env={"COLUMNS": "250"}).output).split())
    assert f"{option} <{values}>" in help_text
    bad = runner.invoke(app, [command, option, "nope"])
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", bad.output).split())
    assert bad.exit_code == 2 and f"Invalid value for '{option}': 'nope' is not one of {values.replace('|', ', ')}" \
        in text


def test_api_callers_meet_the_rule_the_cli_applies():
    """One rule: the CLI's words after its prefix are the API's after the option's name."""
    from expclip.stages.audit import audit
    from expclip.stages.evaluate import evaluate
    from expclip.stages.search import search

    with pytest.raises(ExpclipError, match=r"^--ensemble: 'nope' is not one of logits, embedding$"):
        evaluate(None, [], ensemble="nope")
    with pytest.raises(ExpclipError, match=r"^--device: 'gpu' is not one of auto, cpu, cuda, cuda:N, mps$"):
        search(Path("unread.h5"), np.zeros((1, 4), np.float32), device="gpu")
    with pytest.raises(ExpclipError, match=r"^--threshold 0: a cosine in \(0, 1\]$"):
        audit([], [], threshold=0)
    with pytest.raises(ExpclipError, match=r"^--detector: 'mtcnn' is not one of haar, yunet, none$"):
        PredictConfig(detector="mtcnn").check()


def test_evaluate_passes_the_config_it_parsed(monkeypatch, tmp_path):
    seen = {}

    def fake(head, caches, config):
        seen["head"], seen["caches"], seen["config"] = head, caches, config
        return []

    monkeypatch.setattr("expclip.stages.evaluate.evaluate", fake)
    (tmp_path / "c.h5").write_bytes(b"")
    result = runner.invoke(app, ["evaluate", "--cache", str(tmp_path / "c.h5"), "--baseline"])
    assert result.exit_code == 0, result.output
    assert seen == {"head": None, "caches": [tmp_path / "c.h5"], "config": EvaluateConfig(baseline=True)}
    result = runner.invoke(app, ["evaluate", "--cache", str(tmp_path / "c.h5"), "--prompt-set", "a", "--prompt-set",
                                 "b", "--ensemble", "embedding", "--device", "cpu", "--clip-key", "K"])
    assert result.exit_code == 0, result.output
    assert seen["config"] == EvaluateConfig(prompt_sets=["a", "b"], ensemble="embedding", device="cpu", clip_key="K")
    assert seen["config"].sets() == ["a", "b"] and EvaluateConfig(prompt_sets=["all"]).sets() is None


def test_audit_passes_the_config_it_parsed(monkeypatch, tmp_path):
    seen = {}

    def fake(caches, against, config):
        seen["config"] = config
        return {"threshold": config.threshold, "clip_key": "K", "counts": [], "pairs": []}

    monkeypatch.setattr("expclip.stages.audit.audit", fake)
    (tmp_path / "c.h5").write_bytes(b"")
    result = runner.invoke(app, ["audit", str(tmp_path / "c.h5"), "--threshold", "0.5", "--no-within"])
    assert result.exit_code == 0, result.output
    assert seen["config"] == AuditConfig(threshold=0.5, within=False)


def test_extract_reads_the_source_as_the_source_config_it_parsed(monkeypatch, tmp_path):
    seen = {}

    def fake(source, config):
        seen["source"], seen["config"] = source, config
        raise ExpclipError("stop here")

    monkeypatch.setattr("expclip.stages.extract.sources.from_config", fake)
    out = ["--out", str(tmp_path / "c.h5")]
    assert runner.invoke(app, ["extract", str(tmp_path), *out]).output == "error: stop here\n"
    assert seen == {"source": tmp_path, "config": SourceConfig()}
    given = ["--source-type", "clips", "--root", "r", "--strip-prefix", "/p", "--frames", "8", "--dataset", "DFEW",
             "--label-field", "y"]
    assert runner.invoke(app, ["extract", str(tmp_path), *out, *given]).exit_code == 2
    assert seen["config"] == SourceConfig("clips", Path("r"), "/p", 8, "DFEW", "y")
    with pytest.raises(ExpclipError, match=r"^--source-type: 'tar' is not one of auto, folder, list, clips, shards$"):
        SourceConfig(source_type="tar").check()
    with pytest.raises(ExpclipError, match=r"^--frames 0: sample 1 to 256 frames per clip"):
        SourceConfig(frames=0).check()


@pytest.fixture
def fit_head_calls(monkeypatch, tmp_path) -> tuple[list[str], list[tuple]]:
    """fit-head's arguments up to its options, and the (config, cache groups) each run hands the stage, which
    stops there."""
    seen = []

    def fake(caches, out, config, **select):
        seen.append((config, select))
        raise ExpclipError("stop here")

    monkeypatch.setattr("expclip.stages.fit_head.train.fit_head", fake)
    (tmp_path / "c.h5").write_bytes(b"")
    return ["fit-head", str(tmp_path / "c.h5"), "--out", str(tmp_path / "h")], seen


def test_fit_head_reads_the_cache_groups_it_was_told(fit_head_calls):
    args, seen = fit_head_calls
    assert runner.invoke(app, args).output == "error: stop here\n"
    assert runner.invoke(app, [*args, "--clip-key", "C", "--teacher-key", "T", "--instruction", "paper"]).exit_code == 2
    assert [select for _, select in seen] == [{**vars(CacheGroups()), "exclude": None},
                                               {"clip_key": "C", "teacher_key": "T", "instruction": "paper",
                                                "exclude": None}]
    assert vars(CacheGroups()) == {"clip_key": None, "teacher_key": None, "instruction": None}


def test_fit_head_reads_text_options_by_the_fields_own_rule(fit_head_calls):
    args, calls = fit_head_calls
    for given in (["--milestones", "2, 4", "--logit-scale", "learnable"], ["--milestones", "", "--logit-scale", "7.5"],
                  ["--lr", "0.5", "--batch-size", "8"]):
        assert runner.invoke(app, [*args, *given]).output == "error: stop here\n"
    assert [config for config, _ in calls] == [
        FitConfig(milestones=(2, 4), logit_scale="learnable"), FitConfig(milestones=(), logit_scale=7.5),
        FitConfig(lr=0.5, batch_size=8),
    ]
    assert _params("fit-head")["--milestones"].default == "30" and FitConfig.milestones == (30,)
    bad = runner.invoke(app, [*args, "--milestones", "3,x", "--logit-scale", "big"])
    assert bad.exit_code == 2 and bad.output == "error: --milestones: '3,x' is not a comma list of epochs\n"


def test_ablate_gives_every_run_the_cache_groups_it_was_told(monkeypatch, tmp_path):
    seen = []

    def fake(train, evals, grid, out_dir, *, base, evaluation, select):
        seen.append(select)
        raise ExpclipError("stop here")

    monkeypatch.setattr("expclip.ablate.run_grid", fake)
    (tmp_path / "c.h5").write_bytes(b"")
    args = ["ablate", str(tmp_path / "c.h5"), "--eval", str(tmp_path / "c.h5"), "--grid", "lr=0.1",
            "--out-dir", str(tmp_path / "abl")]
    assert runner.invoke(app, args).output == "error: stop here\n"
    assert runner.invoke(app, [*args, "--clip-key", "C", "--teacher-key", "T", "--instruction", "paper"]).exit_code == 2
    assert seen == [vars(CacheGroups()), {"clip_key": "C", "teacher_key": "T", "instruction": "paper"}]


def test_run_overrides_are_the_extract_fields_given():
    config = RunConfig(data_root=Path("d"), clip_model="m", batch_size=3, device="cpu", fit="epochs=2")
    assert config.extract_overrides() == {"clip_model": "m", "batch_size": 3}
    assert config.fit_overrides() == {"epochs": 2}
    assert RunConfig(data_root=Path("d")).extract_overrides() == {} and RunConfig(data_root=Path("d")).fit is None


def test_version_completion_and_the_command_order():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"expclip {version('expclip')}\n"
    top = typer.main.get_command(app)
    assert top.list_commands(None) == ["extract", "fit-head", "evaluate", "ablate", "run", "predict", "search",
                                       "audit", "cache", "head", "demo"]
    assert {"--install-completion", "--show-completion"} <= {o for p in top.params for o in p.opts}


@pytest.mark.parametrize("command, kind", [("extract", "File"), ("fit-head", "File"), ("head export", "File"),
                                           ("run", "Folder")])
def test_out_says_whether_it_is_a_file_or_a_folder(command, kind):
    group = typer.main.get_command(app)
    for word in command.split():
        group = group.commands[word]
    [out] = [p for p in group.params if "--out" in p.opts]
    assert out.help.startswith(kind)
    help_text = " ".join(re.sub("[│╭╮╰╯─]", " ", runner.invoke(app, [*command.split(), "--help"],
                                                               env={"COLUMNS": "250"}).output).split())
    assert f"--out <{'file' if kind == 'File' else 'dir'}> {kind}" in help_text


def test_teacher_help_says_how_to_run_without_one():
    assert "without one: --no-teacher" in _params("extract")["--teacher"].help
    assert "--no-teacher" in _params("extract")


def test_dataset_names_are_case_insensitive(monkeypatch, tmp_path):
    from expclip.demo.synthetic import write_faces

    write_faces(tmp_path / "faces", ["happy", "sad"], 1, size=16)
    seen = {}

    def fake_extract(source, out, cfg):
        seen["dataset"] = source.dataset
        return {"cache": str(out), "rows": 0, "encoded_rows": 0, "failures": {}, "loaded": [], "merged": False,
                "ignored_files": 0, "seconds": {}, "rank": 0, "part": None}

    monkeypatch.setattr("expclip.stages.extract.extraction.extract", fake_extract)
    for given, stored in [("rafdb", "RAFDB"), ("AFFECTNET8", "AffectNet8"), ("my-faces", "my-faces")]:
        result = runner.invoke(app, ["extract", str(tmp_path / "faces"), "--out", str(tmp_path / "c.h5"),
                                     "--dataset", given])
        assert result.exit_code == 0, result.output
        assert seen["dataset"] == stored


def test_an_unknown_dataset_for_a_clip_list_is_refused_listing_the_known_ones(monkeypatch, tmp_path):
    monkeypatch.setattr("expclip.stages.extract.extraction.extract", lambda *a: pytest.fail("extract ran"))
    (tmp_path / "clip1").mkdir()
    clips = tmp_path / "clips.txt"
    clips.write_text("clip1 16 0\n")
    result = runner.invoke(app, ["extract", str(clips), "--out", str(tmp_path / "c.h5"), "--dataset", "dfew2"])
    assert result.exit_code == 2
    assert result.output == ("error: --dataset 'dfew2': a clip list takes its class count from its benchmark; "
                             "known: RAFDB, AffectNet7, AffectNet8, FERPlus, DFEW, FERV39k, MAFW, AFEW\n")


def test_extract_and_predict_default_to_the_same_clip():
    """A cache extracted with no --clip-model and a predict with none (and no head) use one CLIP: ViT-B-16."""
    assert _params("extract")["--clip-model"].default == "ViT-B-16"
    assert _params("predict")["--clip-model"].help.endswith("(default: the head's CLIP, else ViT-B-16).")
