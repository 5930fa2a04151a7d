"""Logs a batch job can read: plain progress lines where stderr is not a terminal (CliRunner's is not), the bar
on a terminal, --quiet, rank 0 only; --version, completion and the command list of `expclip --help`."""

import io
import itertools
import re
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from test_fit_head import make_cache
from typer.testing import CliRunner

from expclip.base.version import __version__
from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.stages.shared import progress

runner = CliRunner()
LINE = re.compile(r"^(?P<desc>[a-z-]+)(?: [^:]*)?: (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.,]+) \w+/s, elapsed (?P<elapsed>\d+:\d\d:\d\d), (?:ETA (?P<eta>[\d:]+|--)|done)$")
FIT = ["--device", "cpu", "--batch-size", "32", "--epochs", "3"]  # 64 rows: 2 steps an epoch, 6 in all


@pytest.fixture
def ticking(monkeypatch):
    """The progress clock moves one second each time it is read: rates and ETAs are exact."""
    ticks = itertools.count()
    monkeypatch.setattr(progress, "clock", lambda: float(next(ticks)))


def _lines(output: str, desc: str) -> list[re.Match]:
    """The plain progress lines of `desc` in a command's output, each checked against the line format."""
    found = [line for line in output.splitlines() if re.match(f"{desc}[ :]", line) and "/" in line]
    matched = [LINE.match(line) for line in found]
    assert all(matched), found
    return matched


def _seconds(clock: str) -> int:
    h, m, s = map(int, clock.split(":"))
    return 3600 * h + 60 * m + s


def _consistent(line: re.Match) -> None:
    """Rate = done / elapsed, ETA = what is left at that rate, percent = done / total: the line agrees with itself."""
    done, total, elapsed = int(line["done"]), int(line["total"]), _seconds(line["elapsed"])
    assert line["pct"] == f"{100 * done / total:.0f}"
    assert line["rate"] == f"{done / elapsed:,.1f}"
    if line["eta"] is not None:
        assert line["eta"] == str(timedelta(seconds=round((total - done) * elapsed / done)))


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faces")
    write_faces(folder, ["happy", "sad"], 3, size=32)
    return folder


def test_extract_in_a_batch_log_prints_done_total_rate_and_eta_at_intervals(faces, tiny_clip, tmp_path, ticking):
    cache = tmp_path / "c.h5"
    result = runner.invoke(app, ["--log-every", "0", "extract", str(faces), "--out", str(cache), "--clip-model",
                                 tiny_clip, "--no-teacher", "--num-workers", "0", "--batch-size", "2",
                                 "--shard-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = _lines(result.output, "extract")
    # batches of 2 within shards of 4 over the 6 pictures written: a line after each, then the summary
    assert [(int(m["done"]), int(m["total"]), m["unit"]) for m in lines] == [(2, 6, "faces"), (4, 6, "faces"),
                                                                           (6, 6, "faces"), (6, 6, "faces")]
    assert [m["eta"] is None for m in lines] == [False, False, False, True]  # the last one says done
    assert sorted(_seconds(m["elapsed"]) for m in lines) == [_seconds(m["elapsed"]) for m in lines]
    for line in lines:
        _consistent(line)
    with CacheReader(cache) as reader:
        assert len(reader.items()) == len(list(faces.rglob("*.png"))) == 6
    assert "━" not in result.output  # no bar in a log


def test_lines_come_once_per_log_every_seconds_and_the_env_var_sets_it(tmp_path, ticking):
    cache = make_cache(tmp_path / "t.h5", n=64)
    every = runner.invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "a"), *FIT],
                          env={"EXPCLIP_LOG_EVERY": "3"})
    assert every.exit_code == 0, every.output
    lines = _lines(every.output, "fit-head")
    assert lines[-1]["eta"] is None and lines[-1]["done"] == lines[-1]["total"] == "6"
    times = [_seconds(m["elapsed"]) for m in lines[:-1]]
    assert len(times) >= 2 and all(b - a >= 3 for a, b in itertools.pairwise(times)), times
    assert len(times) < 6  # fewer lines than steps
    for line in lines:
        _consistent(line)
    default = runner.invoke(app, ["fit-head", str(cache), "--out", str(tmp_path / "b"), *FIT])
    assert default.exit_code == 0, default.output
    # under 30 ticked seconds: only the final summary
    assert [m["eta"] for m in _lines(default.output, "fit-head")] == [None]
    assert progress.settings.every == progress.LOG_EVERY == 30


def test_quiet_prints_no_progress_but_the_results(tmp_path):
    cache = make_cache(tmp_path / "t.h5", n=64)
    result = runner.invoke(app, ["--quiet", "fit-head", str(cache), "--out", str(tmp_path / "h"), *FIT])
    assert result.exit_code == 0, result.output
    assert _lines(result.output, "fit-head") == [] and "━" not in result.output
    assert result.output.startswith(f"wrote {tmp_path / 'h.safetensors'}")


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False), ("3", False)])
def test_only_rank_0_of_a_launched_job_prints_progress(tmp_path, rank, shown):
    cache = make_cache(tmp_path / "t.h5", n=64)
    result = runner.invoke(app, ["--log-every", "0", "fit-head", str(cache), "--out", str(tmp_path / "h"), *FIT],
                           env={"RANK": rank, "WORLD_SIZE": "4"})
    assert result.exit_code == 0, result.output
    assert len(_lines(result.output, "fit-head")) == (7 if shown else 0)  # a line per step and the summary


def test_a_terminal_gets_the_bar_and_no_plain_lines(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(progress, "stderr", Console(file=terminal, force_terminal=True, width=120))
    cache = make_cache(tmp_path / "t.h5", n=64)
    result = runner.invoke(app, ["--log-every", "0", "fit-head", str(cache), "--out", str(tmp_path / "h"), *FIT])
    assert result.exit_code == 0, result.output
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert "fit-head" in drawn and "━" in drawn and "6/6" in drawn and "steps/s" in drawn
    assert not any(LINE.match(line) for line in re.split("[\r\n]", drawn + result.output))


@pytest.fixture(scope="module")
def faces_cache(faces, tiny_clip, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache") / "c.h5"
    made = runner.invoke(app, ["--quiet", "extract", str(faces), "--out", str(cache), "--clip-model", tiny_clip,
                               "--no-teacher", "--num-workers", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    return cache


@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_evaluate_and_audit_report_progress_over_the_cache_items(faces_cache, command):
    cache = faces_cache
    args = {"evaluate": ["--cache", str(cache), "--baseline"], "audit": [str(cache)]}[command]
    result = runner.invoke(app, ["--log-every", "0", command, *args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with CacheReader(cache) as reader:
        usable = int(reader.items().ok.sum())
    assert usable == 6
    lines = _lines(result.output, command)
    assert lines[-1]["eta"] is None and (lines[-1]["done"], lines[-1]["total"]) == (str(usable), str(usable))


def test_predict_reports_progress_over_the_pictures(faces, tiny_clip):
    result = runner.invoke(app, ["--log-every", "0", "predict", str(faces), "--clip-model", tiny_clip,
                                 "--detector", "none", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pictures = len(list(faces.rglob("*.png")))
    lines = _lines(result.output, "predict")  # a line after each picture, then the summary
    assert [(int(m["done"]), int(m["total"])) for m in lines] == [(n, pictures) for n in [*range(1, 7), 6]]
    assert lines[-1]["eta"] is None


RANGE = "Invalid value for '--log-every' (env var: 'EXPCLIP_LOG_EVERY'): Input should be greater than or equal to 0"


@pytest.mark.parametrize("value, said", [
    ("inf", "error: --log-every inf (or EXPCLIP_LOG_EVERY): a finite number of seconds, 0 or more"),
    ("nan", RANGE),
    ("-1", RANGE),
])
def test_a_log_interval_that_is_no_number_of_seconds_is_refused(value, said):
    result = runner.invoke(app, ["--log-every", value, "cache", "info", "missing.h5"])
    assert result.exit_code == 2 and said in " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split()), result.output
    assert "Traceback" not in result.output and (result.output == said + "\n") == said.startswith("error:")


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"expclip {__version__}\n"


def test_help_lists_commands_in_the_order_people_use_them():
    text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    panel = text[text.index("Commands"):]
    listed = re.findall(r"^│ ([a-z-]+) ", panel, flags=re.MULTILINE)
    assert listed == ["extract", "fit-head", "evaluate", "ablate", "run", "predict", "search", "audit", "cache",
                      "head", "demo"]


def test_shell_completion_is_offered_and_works(monkeypatch):
    import shellingham

    text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--install-completion" in text and "--show-completion" in text
    # typer asks shellingham for the shell the command runs in; a test's ancestors need not include one
    monkeypatch.setattr(shellingham, "detect_shell", lambda: ("bash", "/bin/bash"))
    script = runner.invoke(app, ["--show-completion"], prog_name="expclip")
    assert script.exit_code == 0, script.output
    assert "_EXPCLIP_COMPLETE=complete_bash" in script.output and "complete " in script.output
    # the completion itself: what bash would get for `expclip fi<TAB>`
    done = runner.invoke(app, [], prog_name="expclip",
                         env={"_EXPCLIP_COMPLETE": "complete_bash", "COMP_WORDS": "expclip fi", "COMP_CWORD": "1"})
    assert done.output.split() == ["fit-head"]
