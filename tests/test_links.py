"""Writing through a symbolic link replaces its target, never the link: a link and its target are one file,
and a cache reached by either is one cache (one lock, one partial folder, one index folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from expclip.cache import format as fmt
from expclip.cache.atomic import followed, write_atomically
from expclip.cache.lock import lock_path
from expclip.cache.reader import CacheReader
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.stages.fit_head import FitConfig
from expclip.stages.fit_head import train as fit_train
from expclip.stages.search.index import index_files

runner = CliRunner()


def _linked(tmp_path: Path, target_exists: bool = True) -> tuple[Path, Path]:
    """(link, target): `here/name` -> `../there/real` (relative, as `ln -s` users write them)."""
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    target = tmp_path / "there" / "real"
    if target_exists:
        target.write_text("old")
    link = tmp_path / "here" / "name"
    link.symlink_to(Path("..") / "there" / "real")
    return link, target


def test_an_atomic_write_replaces_the_target_and_keeps_the_link(tmp_path):
    link, target = _linked(tmp_path)
    seen = []
    write_atomically(link, lambda tmp: (seen.append(tmp.parent.resolve()), tmp.write_text("new")))
    assert link.is_symlink() and os.readlink(link) == "../there/real" and target.read_text() == "new"
    assert seen == [target.parent.resolve()]  # the temporary lay beside the target: one filesystem, one rename
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["name"]
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == ["real"]


def test_a_dangling_link_gets_its_target_and_chains_are_followed(tmp_path):
    link, target = _linked(tmp_path, target_exists=False)
    chained = tmp_path / "chained"
    chained.symlink_to(link)
    assert followed(chained) == tmp_path / "here" / ".." / "there" / "real" and followed(target) == target
    write_atomically(chained, lambda tmp: tmp.write_text("made"))
    assert chained.is_symlink() and link.is_symlink() and target.read_text() == "made"


def test_a_cache_and_a_link_to_it_share_lock_partial_and_index_folders(tmp_path):
    link, target = _linked(tmp_path)
    real = followed(link)
    assert fmt.partial_dir(link) == real.with_name("real.partial") and fmt.partial_dir(target) == target.with_name(
        "real.partial"
    )
    assert lock_path(link) == real.with_name("real.lock")
    assert index_files(link, "k", None, "Flat")[0].parent == real.with_name("real.faiss")
    assert real.resolve() == target.resolve()


def test_extract_through_a_link_writes_the_target_and_a_rerun_by_the_target_is_complete(tmp_path, tiny_clip):
    faces = tmp_path / "faces"
    write_faces(faces, ["happy", "sad"], 2, size=32)
    link, target = _linked(tmp_path, target_exists=False)
    args = ["--clip-model", tiny_clip, "--no-teacher", "--num-workers", "0", "--device", "cpu"]
    first = runner.invoke(app, ["extract", str(faces), "--out", str(link), *args])
    assert first.exit_code == 0, first.output
    assert link.is_symlink() and os.readlink(link) == "../there/real"
    with CacheReader(target) as cache:
        assert len(cache.items()) == 4 and cache.image_keys()
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["name"]  # no partial folder, lock or temporary
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == ["real"]
    again = runner.invoke(app, ["extract", str(faces), "--out", str(target), *args])
    assert again.exit_code == 0 and f"{target}: already complete, nothing to encode" in again.output, again.output


def test_a_cache_extended_through_a_link_stays_one_file(tmp_path):
    items = fmt.Items(ids=["a", "b"], labels=np.array([0, 1]), class_names=["x", "y"])
    link, target = _linked(tmp_path, target_exists=False)
    write_arrays(target, items, file_attrs={}, aligned={"image/k": (np.ones((2, 4), np.float32), {"model": "m"})})
    write_arrays(link, items, file_attrs={}, aligned={"teacher/t/paper": (np.ones((2, 4), np.float32), {"model": "t"})})
    assert link.is_symlink()
    with CacheReader(target) as cache:
        assert cache.image_keys() == ["k"] and cache.teacher_keys() == [("t", "paper")]


def test_fit_head_through_linked_head_files_writes_their_targets(tmp_path):
    rng = np.random.default_rng(0)
    items = fmt.Items(ids=[f"t{i}" for i in range(8)], labels=np.full(8, -1), class_names=[])
    train = tmp_path / "train.h5"
    write_arrays(
        train,
        items,
        file_attrs={},
        aligned={
            "image/m@t": (
                rng.standard_normal((8, 4)).astype(np.float32),
                {"model": "m", "pretrained": "t", "logit_scale": 20.0},
            ),
            "teacher/t5/paper": (
                rng.standard_normal((8, 6)).astype(np.float32),
                {"model": "t5", "instruction": "paper"},
            ),
        },
    )
    (tmp_path / "store").mkdir()
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"head{suffix}").symlink_to(tmp_path / "store" / f"kept{suffix}")
    fit_train.fit_head([train], tmp_path / "head", FitConfig(epochs=1, batch_size=4, device="cpu"))
    assert (tmp_path / "head.safetensors").is_symlink() and (tmp_path / "head.json").is_symlink()
    assert json.loads((tmp_path / "store" / "kept.json").read_text())["n_train"] == 8
    assert (tmp_path / "store" / "kept.safetensors").stat().st_size > 0
