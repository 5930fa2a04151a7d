"""The README's commands, as written: each `expclip` line of its shell blocks names a command that exists and
only options that command takes, with a value where the option wants one (the runs themselves need real weights
and datasets; the demo and the Python example run in test_demo.py and test_predict.py)."""

import re
import shlex
from pathlib import Path

import typer

from expclip.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    """Every `expclip ...` command of the README's bash blocks (continuation lines joined, comments cut, one
    command per `&&`-separated part)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text("utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split("  #")[0]):
                words = shlex.split(part, comments=True)
                if words[:1] == ["expclip"]:
                    found.append(shlex.join(words))
    return found


def _resolve(words: list[str]) -> tuple:
    """The (sub)command the words name and the words after it."""
    command = typer.main.get_command(app)
    while hasattr(command, "commands"):  # a group (typer ships its own click)
        assert words and words[0] in command.commands, f"no command {words[:1]} in {sorted(command.commands)}"
        command, words = command.commands[words[0]], words[1:]
    return command, words


def test_every_readme_command_exists_with_the_options_it_is_given():
    lines = _command_lines()
    named = {" ".join(shlex.split(line)[1:3 if shlex.split(line)[1] in ("cache", "head") else 2]) for line in lines}
    assert named == {"demo", "extract", "cache info", "cache verify", "cache export", "fit-head", "evaluate", "ablate",
                     "run", "predict", "search", "audit", "head export"}  # every command, each with an example
    root = typer.main.get_command(app)
    leaves = {f"{n} {s}" if hasattr(c, "commands") else n for n, c in root.commands.items()
              for s in (c.commands if hasattr(c, "commands") else [None])}
    assert leaves == named, "a command of the CLI without an example in the README (or the reverse)"
    for line in lines:
        command, words = _resolve(shlex.split(line)[1:])
        options = {name: p for p in command.params if p.param_type_name == "option"
                   for name in p.opts + p.secondary_opts}
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("-"):
                assert word in options, f"{line}: {command.name} has no option {word}"
                if not options[word].is_flag:
                    assert i + 1 < len(words) and not words[i + 1].startswith("--"), f"{line}: {word} needs a value"
                    i += 1
            i += 1
