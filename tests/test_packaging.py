"""The wheel holds every sub-package: pyproject.toml lists them by hand, so a new folder could silently be left out."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = setup["package-dir"]  # package name -> its folder in the repository
    found = set()
    for name, folder in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert set(roots) == {"expclip", "expclip.base", "expclip.cache", "expclip.stages"}
    listed = set(setup["packages"])
    assert sorted(found - listed) == [], "package folders missing from pyproject.toml's packages"
    assert sorted(listed - found) == [], "pyproject.toml lists packages that have no folder"
