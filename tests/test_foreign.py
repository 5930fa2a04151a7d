"""A healthy HDF5 file that expclip did not write is someone's data: every command says it is not an
expclip cache and leaves it exactly as it was (never "damaged … delete it", never extended or replaced)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from expclip.cache.checksums import DamagedCache, NotACache
from expclip.cache.reader import open_cache
from expclip.cli import app
from expclip.demo.synthetic import write_faces

runner = CliRunner()
REASON = "no format attribute 'expclip-cache', no format_version"


def _foreign(path: Path, libver: str) -> Path:
    """A user's HDF5 file: a dataset and an attribute of its own (superblock 0 with 'earliest', as h5py's
    default writes it and as expclip 0.1.0 wrote its caches; 2 or 3 with 'latest')."""
    with h5py.File(path, "w", libver=libver) as f:
        f.create_dataset("measurements", data=np.arange(100, dtype=np.float64).reshape(10, 10))
        f.attrs["format"] = "lab-notebook"  # another tool's marker under the same name
        f.attrs["owner"] = "someone"
    return path


def _state(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _message(path: Path, reason: str = REASON) -> str:
    return (f"error: {path}: not an expclip cache ({reason}); expclip leaves it untouched: "
            "give an expclip cache, or another file name to create one")


def _commands(path: Path, faces: Path, clip: str) -> dict[str, list[str]]:
    return {
        "cache info": ["cache", "info", str(path)],
        "cache verify": ["cache", "verify", str(path)],
        "extract --out": ["extract", str(faces), "--out", str(path), "--clip-model", clip, "--no-teacher",
                          "--num-workers", "0", "--device", "cpu"],
        "evaluate --cache": ["evaluate", "--baseline", "--cache", str(path)],
        "fit-head": ["fit-head", str(path), "--out", str(path.with_name("head")), "--device", "cpu"],
        "search": ["search", str(path), "--text", "a smile"],
        "audit": ["audit", str(path)],
    }


@pytest.mark.parametrize(("command", "libver"), [(c, "latest") for c in _commands(Path("x"), Path(), "")]
                         + [("cache info", "earliest"), ("extract --out", "earliest")])
def test_a_foreign_hdf5_file_is_named_so_and_left_untouched(command, libver, tmp_path, tiny_clip):
    path = _foreign(tmp_path / "data.h5", libver)
    faces = tmp_path / "faces"
    write_faces(faces, ["happy", "sad"], 1, size=32)
    before = _state(path)
    result = runner.invoke(app, _commands(path, faces, tiny_clip)[command])
    assert result.exit_code == 2, result.output
    reason = REASON.replace(
        "no format attribute 'expclip-cache'", "format attribute 'lab-notebook', not 'expclip-cache'"
    )
    assert result.output.strip() == _message(path, reason) and "Traceback" not in result.output
    assert _state(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "faces"]  # no lock, partial folder, index, head


def test_a_file_without_any_attribute_says_so(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(NotACache) as raised:
        open_cache(path)
    assert f"error: {raised.value}" == _message(path)


def test_a_cache_whose_marker_is_gone_is_damaged_not_foreign(tmp_path):
    """expclip's other attributes are there: the marker itself was damaged, and the cache is expclip's to judge."""
    path = tmp_path / "c.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["format_version"] = 1
        f.attrs["complete"] = True
    with pytest.raises(DamagedCache) as raised:
        open_cache(path)
    assert str(raised.value).startswith(
        f"{path}: the file's format marker is damaged (no format attribute 'expclip-cache'); delete {path} and re-run"
    )
