"""Contact sheets show the cache's own pictures whatever the current folder: extract records an absolute image
root, sheets read only under it (or under --image-root), and a tile without a picture says why."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.reports.sheets import Locator, unshown
from expclip.stages.encoders.images import load_image
from expclip.stages.extract.sources import resolve

runner = CliRunner()


def thumb(path: Path) -> np.ndarray:
    image = load_image(path)
    image.thumbnail((128, 128))
    return np.asarray(image)


def write_cache(path: Path, ids: list[str], file_attrs: dict, features: np.ndarray | None = None) -> Path:
    """A cache of these ids (features random unless given), written as extract writes one."""
    rows = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32) if features is None else features
    items = fmt.Items(ids=ids, labels=np.zeros(len(ids), np.int64), class_names=["a"])
    write_arrays(path, items, file_attrs=file_attrs, aligned={fmt.image_path("m@t"): (rows, {"model": "m"})})
    return path


def test_extract_records_an_absolute_root_and_a_sheet_run_elsewhere_shows_that_folders_pictures(
        tmp_path, tiny_clip, monkeypatch):
    """The issue's case: extract from a relative SOURCE, then a sheet from another folder holding different
    pictures under the same relative paths. The cache's own pictures are shown, and the items' identity does
    not depend on where extract ran."""
    write_faces(tmp_path / "here" / "faces", ["happy", "sad"], 2, size=40, seed=1)
    write_faces(tmp_path / "elsewhere" / "faces", ["happy", "sad"], 2, size=40, seed=2)  # a decoy
    cache = tmp_path / "c.h5"
    monkeypatch.chdir(tmp_path / "here")
    made = runner.invoke(app, ["extract", "faces", "--out", str(cache), "--clip-model", tiny_clip, "--no-teacher",
                               "--num-workers", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    here = resolve(Path("faces"))
    with h5py.File(cache, "r") as f:
        assert f.attrs["source"] == "faces" and f.attrs["source_root"] == str((tmp_path / "here" / "faces").resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert resolve(tmp_path / "here" / "faces").items.identity() == here.items.identity()
    where = Locator(cache)
    for item_id in ("happy/0.png", "sad/1.png"):
        np.testing.assert_array_equal(where.picture(item_id), thumb(tmp_path / "here" / "faces" / item_id))
        assert not np.array_equal(where.picture(item_id), thumb(tmp_path / "elsewhere" / "faces" / item_id))
    result = runner.invoke(app, ["search", str(cache), "--text", "a face", "-k", "4", "--device", "cpu",
                                 "--sheet", str(tmp_path / "hits.png")])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output and Image.open(tmp_path / "hits.png").format == "PNG"


def test_a_tile_without_a_picture_says_why_and_nothing_outside_the_root_is_read(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    write_faces(root, ["ok"], 1, size=40)
    (root / "d" / "notes.png").write_text("a text file with a picture's name")
    data = (root / "ok" / "0.png").read_bytes()
    (root / "d" / "cut.png").write_bytes(data[: len(data) // 2])
    write_faces(tmp_path / "private", ["me"], 1, size=40)  # a real picture outside the root
    secret = tmp_path / "private" / "me" / "0.png"
    ids = ["ok/0.png", "d/notes.png", "d/cut.png", "d/gone.png", "../private/me/0.png", str(secret),
           "d/../../private/me/0.png", str(root / "ok" / "0.png")]
    cache = write_cache(tmp_path / "c.h5", ids, {"source": "root", "source_root": str(root)})
    where = Locator(cache)
    got = [where.picture(i) for i in ids]
    assert got[1:7] == ["not an image", "unreadable", "not found", "outside the root", "outside the root",
                        "outside the root"]
    np.testing.assert_array_equal(got[0], thumb(root / "ok" / "0.png"))
    np.testing.assert_array_equal(got[7], thumb(root / "ok" / "0.png"))  # an absolute id under the root
    assert unshown(where) == (f"{cache}: 6 tile(s) without a picture (1 not an image, 1 not found, 3 outside the root, "
                              f"1 unreadable); its images are read under {root} (--image-root DIR: where they are now)")

    moved = tmp_path / "moved"
    os.rename(root, moved)
    assert Locator(cache).picture("ok/0.png") == "not found"  # the recorded root, not another folder
    np.testing.assert_array_equal(Locator(cache, moved).picture("ok/0.png"), thumb(moved / "ok" / "0.png"))
    np.testing.assert_array_equal(Locator(cache, tmp_path).picture(str(secret)), thumb(secret))  # the user's choice


def test_caches_without_a_recorded_root_use_an_absolute_source_or_need_image_root(tmp_path, monkeypatch):
    """Caches written before source_root: an absolute source is where their ids start; a relative one is
    refused for a sheet before any work (audit's CLI here: it needs no model), naming --image-root."""
    write_faces(tmp_path / "faces", ["happy"], 2, size=40)
    same = np.ones((2, 8), np.float32)
    old = write_cache(tmp_path / "old.h5", ["happy/0.png", "happy/1.png"], {"source": str(tmp_path / "faces")}, same)
    np.testing.assert_array_equal(Locator(old).picture("happy/1.png"), thumb(tmp_path / "faces" / "happy" / "1.png"))
    listed = write_cache(tmp_path / "listed.h5", ["happy/0.png"], {"source": str(tmp_path / "list.csv")})
    assert Locator(listed).root == tmp_path  # a list file: its folder

    relative = write_cache(tmp_path / "rel.h5", ["happy/0.png", "happy/1.png"], {"source": "faces"}, same)
    monkeypatch.chdir(tmp_path)  # where "faces" would happen to resolve: still refused, it is a guess
    message = (f"{relative}: records no image root, only the relative source 'faces' (written before extract "
               "recorded source_root); give --image-root DIR, the folder its ids start from")
    with pytest.raises(ExpclipError) as refused:
        Locator(relative)
    assert str(refused.value) == message
    result = runner.invoke(app, ["audit", str(relative), "--threshold", "0.99", "--sheet", str(tmp_path / "p.png"),
                                 "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 2 and " ".join(result.output.split()) == f"error: {message}"
    assert not (tmp_path / "a.json").exists()
    result = runner.invoke(app, ["audit", str(relative), "--threshold", "0.99", "--sheet", str(tmp_path / "p.png"),
                                 "--image-root", str(tmp_path / "faces")])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output and Image.open(tmp_path / "p.png").format == "PNG"
    (tmp_path / "faces" / "happy" / "1.png").unlink()
    result = runner.invoke(app, ["audit", str(old), "--threshold", "0.99", "--sheet", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert f"note: {old}: 1 tile(s) without a picture (1 not found)" in " ".join(result.output.split())


def test_a_sheet_is_never_written_over_a_picture_it_shows(tmp_path):
    """A sheet named like one of the cache's pictures (directly, through a link, or a frame of a clip folder) is
    refused before any work, the picture's bytes untouched; another name in the same folder is fine."""
    write_faces(tmp_path / "faces", ["happy"], 2, size=40)
    picture = tmp_path / "faces" / "happy" / "1.png"
    before = picture.read_bytes()
    cache = write_cache(tmp_path / "c.h5", ["happy/0.png", "happy/1.png"], {"source_root": str(tmp_path / "faces")},
                        np.ones((2, 8), np.float32))
    (tmp_path / "link.png").symlink_to(picture)
    for target in (picture, tmp_path / "link.png"):
        result = runner.invoke(app, ["audit", str(cache), "--threshold", "0.99", "--sheet", str(target),
                                     "--json", str(tmp_path / "a.json")])
        assert result.exit_code == 2
        assert " ".join(result.output.split()) == (f"error: --sheet {target}: is the picture of item 'happy/1.png' "
                                                   f"of {cache}; writing it would destroy it: give another path")
        assert picture.read_bytes() == before and not (tmp_path / "a.json").exists()
    beside = tmp_path / "faces" / "happy" / "sheet.png"
    result = runner.invoke(app, ["audit", str(cache), "--threshold", "0.99", "--sheet", str(beside)])
    assert result.exit_code == 0, result.output
    assert Image.open(beside).format == "PNG" and picture.read_bytes() == before

    (tmp_path / "clips" / "c1").mkdir(parents=True)
    clips = fmt.Items(ids=["c1"], labels=np.zeros(1, np.int64), class_names=["a"],
                      frame_index=np.zeros((1, 16), np.int32), num_frames=np.ones(1, np.int32))
    clip_cache = tmp_path / "clips.h5"
    write_arrays(clip_cache, clips, file_attrs={"source_root": str(tmp_path / "clips")},
                 aligned={fmt.image_path("m@t"): (np.ones((16, 8), np.float32), {"model": "m"})})
    assert Locator(clip_cache).shows(tmp_path / "clips" / "c1" / "00001.jpg") == "c1"
    assert Locator(clip_cache).shows(tmp_path / "clips" / "other.png") is None
