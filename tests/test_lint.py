"""`ruff check` (pyflakes, import order, bugbear, 120-character lines) is part of the README's test command,
so that CI, which runs exactly that command, also keeps the tree lint-free."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    """The ruff command: the installed executable, else the module (both come with the `test` extra)."""
    if exe := shutil.which("ruff"):
        return [exe]
    pytest.importorskip("ruff", reason="ruff is in the `test` extra: pip install -e '.[test]'")
    return [sys.executable, "-m", "ruff"]


def test_ruff_finds_nothing_in_the_tree():
    result = subprocess.run([*ruff(), "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reports_a_long_line_and_an_unused_import(tmp_path):
    """The gate can fail: the project's settings flag what they promise to flag."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nX = '" + "x" * 120 + "'\n")
    result = subprocess.run([*ruff(), "check", "--no-cache", "--output-format", "concise",
                             "--config", str(ROOT / "pyproject.toml"), str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "F401" in result.stdout and "E501" in result.stdout, result.stdout
