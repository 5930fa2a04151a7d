"""The rooms of the house (docs/architecture.md), read from the source's import statements.

base imports nothing of expclip; cache imports only base; the shared rooms
(stages.shared, then stages.encoders) import base, cache and what is below them;
a stage imports base, cache, the shared rooms and itself, never another stage or
the wiring; only the encoders (and the demo's checkpoint builders) import open_clip
or transformers; module-level imports form no cycle; no source, test or benchmark
file is over 400 lines.
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml, [tool.setuptools.package-dir]).
FOLDERS = {"base": "expclip.base", "cache": "expclip.cache", "stages": "expclip.stages", "pipeline": "expclip"}
MODEL_LIBRARIES = ("open_clip", "transformers")
MAY_IMPORT_MODEL_LIBRARIES = ("expclip.stages.encoders", "expclip.demo.checkpoints", "expclip.demo.pretrain")
SHARED = ("stages.shared", "stages.encoders")  # rooms every stage may use; encoders may use stages.shared
MAX_LINES = 400


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the four source folders."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


@functools.cache
def _statements(text: str) -> tuple[tuple[bool, str | None, int, tuple[str, ...], int, bool], ...]:
    """(a `from` import, its module, its level, the names, line, at module level) for each import of a source
    text. Cached by the text: the cases below copy the whole tree and edit one file, so only that one is parsed
    again."""
    tree = ast.parse(text)
    top_level = {id(node) for node in tree.body}
    return tuple((isinstance(node, ast.ImportFrom), getattr(node, "module", None), getattr(node, "level", 0),
                  tuple(alias.name for alias in node.names), node.lineno, id(node) in top_level)
                 for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for each import; `from A import b` names A.b when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for is_from, name, level, names, line, top in _statements(path.read_text("utf-8")):
        if not is_from:
            found += [(alias, line, top) for alias in names]
            continue
        base = name or ""
        if level:
            anchor = package.split(".")[: len(package.split(".")) - level + 1]
            base = ".".join(anchor + ([name] if name else []))
        for alias in names:
            target = f"{base}.{alias}"
            found.append((target if target in known else base, line, top))
    return found


def room(module: str) -> str:
    """base, cache, stages.shared, stages.encoders, stages.<stage>, or wiring (everything else under expclip)."""
    for name in ("expclip.base", "expclip.cache", "expclip.stages.shared", "expclip.stages.encoders"):
        if _within(module, name):
            return name.removeprefix("expclip.")
    if _within(module, "expclip.stages"):
        return ".".join(module.split(".")[:3]).removeprefix("expclip.")
    return "wiring"


def _allowed(source: str, target: str) -> bool:
    src, dst = room(source), room(target)
    if src == "base":
        return dst == "base"
    if src == "cache":
        return dst in ("base", "cache")
    if src == "stages.shared":
        return dst in ("base", "cache", "stages.shared")
    if src == "stages.encoders":
        return dst in ("base", "cache", "stages.shared", "stages.encoders")
    if src.startswith("stages."):  # a stage: base, storage, the shared rooms, and its own parts
        return dst in ("base", "cache", *SHARED, src)
    return True


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each, naming the file and line."""
    found = modules(root)
    known = set(found) | {name.rpartition(".")[0] for name in found}
    problems, graph = [], {name: set() for name in found}
    for module, path in found.items():
        where = path.relative_to(root)
        lines = len(path.read_text("utf-8").splitlines())
        if lines > MAX_LINES:
            problems.append(f"{where}: {lines} lines (at most {MAX_LINES})")
        for target, line, top in imports(module, path, known):
            library = target.split(".")[0]
            if library in MODEL_LIBRARIES and not any(_within(module, p) for p in MAY_IMPORT_MODEL_LIBRARIES):
                problems.append(f"{where}:{line}: imports {target}; only stage one's encoders may")
            if not _within(target, "expclip"):
                continue
            if not _allowed(module, target):
                problems.append(f"{where}:{line}: {room(module)} imports {target} ({room(target)})")
            if top and target in found and target != module:
                graph[module].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected loop found by depth-first search (module-level imports)."""
    state, stack, cycles = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                loop = stack[stack.index(nxt):]
                start = loop.index(min(loop))  # reported from its smallest name, so the message is stable
                cycles.append(loop[start:] + loop[:start] + [min(loop)])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_house_keeps_its_rooms():
    assert violations(ROOT) == []


def test_every_stage_is_a_room_and_shared_parts_are_named():
    rooms = {room(m) for m in modules(ROOT)}
    stages = {"stages.extract", "stages.fit_head", "stages.evaluate", "stages.search", "stages.audit", "stages.predict"}
    assert stages | {"stages.shared", "stages.encoders"} == {r for r in rooms if r.startswith("stages.")}
    assert not any(_within(m, "expclip.stages") and ("synthetic" in m or "checkpoints" in m) for m in modules(ROOT))


@pytest.mark.parametrize(
    "file, line, rule",
    [
        ("cache/reader.py", "from expclip.cli import app", "cache imports expclip.cli"),
        (
            "cache/format.py",
            "from expclip.stages.shared import protocol",
            "cache imports expclip.stages.shared.protocol",
        ),
        ("base/errors.py", "import expclip.cache.format", "base imports expclip.cache.format"),
        (
            "stages/evaluate/zero_shot.py",
            "from expclip.stages.fit_head import FitConfig",
            "stages.evaluate imports expclip.stages.fit_head",
        ),
        (
            "stages/search/nearest.py",
            "from expclip.stages.audit import audit",
            "stages.search imports expclip.stages.audit",
        ),
        (
            "stages/encoders/clip.py",
            "from expclip.stages.extract import sources",
            "stages.encoders imports expclip.stages.extract",
        ),
        (
            "stages/shared/scoring.py",
            "from expclip.stages.encoders import clip",
            "stages.shared imports expclip.stages.encoders",
        ),
        ("stages/predict/api.py", "from expclip.reports import predictions", "stages.predict imports expclip.reports"),
        (
            "stages/shared/heads.py",
            "from expclip.reports.evaluation import tables",
            "stages.shared imports expclip.reports",
        ),
        ("stages/fit_head/train.py", "import open_clip", "imports open_clip; only stage one's encoders may"),
        (
            "cache/format.py",
            "from expclip.cache import reader",
            "import cycle: expclip.cache.format -> expclip.cache.reader -> expclip.cache.format",
        ),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path, file, line, rule):
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / file
    target.write_text(target.read_text("utf-8") + f"\n{line}\n", "utf-8")
    found = violations(tmp_path)
    assert any(rule in problem for problem in found), found
    assert all(file in p or "cycle" in p for p in found)


def test_a_long_file_is_caught(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "cache" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1), "utf-8")
    assert violations(tmp_path) == [f"cache/long.py: {MAX_LINES + 1} lines (at most {MAX_LINES})"]


def test_no_test_or_benchmark_file_is_over_the_limit():
    long = [f"{path.relative_to(ROOT)}: {lines} lines" for folder in ("tests", "benchmarks")
            for path in sorted((ROOT / folder).glob("*.py"))
            if (lines := len(path.read_text("utf-8").splitlines())) > MAX_LINES]
    assert long == []


def test_benchmarks_import_what_exists():
    """Benchmarks run only when someone measures; a moved module must not break them silently."""
    import importlib
    import importlib.util

    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("expclip"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    found = hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
                    assert found, f"{script.name}:{node.lineno}: {node.module} has no {alias.name}"
