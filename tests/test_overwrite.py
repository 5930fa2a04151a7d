"""Outputs never destroy inputs or each other: every command refuses, before any work, an output that is
one of its inputs (the same path, a symbolic link or a hard link to it), and a run's outputs never share a path.

Each refusal is checked against the victim's bytes (unchanged) and the exact
one-line message; the refusals happen before any stage function runs (each
is replaced by one that fails the test).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import KEY, clip_attrs
from PIL import Image
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.demo.synthetic import write_faces
from expclip.output_paths import distinct
from expclip.reports.predictions import annotation_names
from expclip.stages.fit_head import FitConfig
from expclip.stages.fit_head import train as fit_train
from expclip.stages.predict.media import listing
from expclip.stages.shared import protocol

runner = CliRunner()
CLIP = clip_attrs(embed_dim=8)
WORK = ("expclip.stages.extract.sources.resolve", "expclip.stages.fit_head.train.fit_head",
        "expclip.stages.evaluate.evaluate", "expclip.stages.shared.heads.load_head", "expclip.ablate.run_grid",
        "expclip.stages.search.search", "expclip.stages.audit.audit", "expclip.stages.predict.api.ZeroShotFER")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A training cache (with a teacher), an evaluation cache (with prompts), a head, and face pictures."""
    folder = tmp_path_factory.mktemp("overwrite")
    rng = np.random.default_rng(0)
    items = fmt.Items(ids=[f"t{i}" for i in range(16)], labels=np.full(16, -1), class_names=[])
    train = folder / "train.h5"
    write_arrays(train, items, file_attrs={"dataset": "train"}, aligned={
        fmt.image_path(KEY): (rng.standard_normal((16, 8)).astype(np.float32), CLIP),
        fmt.teacher_path("tiny-t5", "paper"): (rng.standard_normal((16, 12)).astype(np.float32),
                                               {"model": "t5", "instruction": "paper"})})
    order = protocol.class_order()
    evals = folder / "eval.h5"
    write_arrays(
        evals,
        fmt.Items(ids=[f"e{i}" for i in range(12)], labels=rng.integers(0, 3, 12), class_names=order[:3]),
        file_attrs={"dataset": "toy-eval"},
        aligned={fmt.image_path(KEY): (rng.standard_normal((12, 8)).astype(np.float32), CLIP)},
        small={
            fmt.text_path(KEY, "class_name"): (
                rng.standard_normal((11, 8)).astype(np.float32),
                {"prompts": [c.lower() + "." for c in order], "class_names": order, "class_index": list(range(11))},
            )
        },
    )
    head = folder / "head"
    fit_train.fit_head([train], head, FitConfig(epochs=1, batch_size=8, device="cpu"))
    faces = folder / "faces"
    write_faces(faces, ["happy", "sad"], 2, size=32)
    return {"train": train, "eval": evals, "head": head, "faces": faces}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output.strip()


def _file_message(option: str, path: Path, label: str, victim: Path) -> str:
    return (f"error: {option} {path}: the same file as the input {label} {victim}; "
            "writing it would destroy it: give another path")


def _cases(d: dict, tmp: Path) -> dict[str, tuple[list[str], Path, str]]:
    """name -> (arguments, the input that must survive, the exact error line)."""
    ev, train, head = d["eval"], d["train"], d["head"]
    evaluate = ["evaluate", "--baseline", "--cache", str(ev)]
    link, hard = tmp / "link.json", tmp / "hard.csv"
    link.symlink_to(ev)
    os.link(ev, hard)
    listing = tmp / "list.csv"
    listing.write_text("".join(f"{p},0\n" for p in sorted(d["faces"].rglob("*.png"))))
    picture = tmp / "victim.png"
    shutil.copy(next(d["faces"].rglob("*.png")), picture)
    grid = tmp / "grid"
    grid.mkdir()
    os.link(ev, grid / "ablation.csv")
    photos = tmp / "photos"
    shutil.copytree(d["faces"], photos)
    inside = sorted(photos.rglob("*.png"))[0]
    shutil.copy(inside, inside.with_name(inside.name + ".png"))  # an input named like the annotation of another
    return {
        "evaluate --json onto the cache": (
            [*evaluate, "--json", str(ev)],
            ev,
            _file_message("--json", ev, "--cache", ev),
        ),
        "evaluate --json onto a symbolic link to the cache": (
            [*evaluate, "--json", str(link)],
            ev,
            _file_message("--json", link, "--cache", ev),
        ),
        "evaluate --csv onto a hard link of the cache": (
            [*evaluate, "--csv", str(hard)],
            ev,
            _file_message("--csv", hard, "--cache", ev),
        ),
        "evaluate --json onto the head's card": (
            [*evaluate, "--head", str(head), "--json", f"{head}.json"],
            Path(f"{head}.json"),
            _file_message("--json", Path(f"{head}.json"), "--head", Path(f"{head}.json")),
        ),
        "fit-head --out onto --init-from": (
            ["fit-head", str(train), "--out", str(head), "--init-from", str(head), "--device", "cpu"],
            Path(f"{head}.safetensors"),
            _file_message("--out", Path(f"{head}.safetensors"), "--init-from", Path(f"{head}.safetensors")),
        ),
        "head export --out onto the head": (
            ["head", "export", str(head), "--out", f"{head}.json"],
            Path(f"{head}.json"),
            _file_message("--out", Path(f"{head}.json"), "HEAD", Path(f"{head}.json")),
        ),
        "search --json onto the cache": (
            ["search", str(ev), "--text", "a smile", "--json", str(link)],
            ev,
            _file_message("--json", link, "CACHE", ev),
        ),
        "audit --csv onto --against": (
            ["audit", str(train), "--against", str(ev), "--csv", str(hard)],
            ev,
            _file_message("--csv", hard, "--against", ev),
        ),
        "ablate --out-dir holding a link of an input": (
            ["ablate", str(train), "--eval", str(ev), "--grid", "epochs=1", "--out-dir", str(grid)],
            ev,
            f"error: --out-dir {grid}: would write {grid / 'ablation.csv'}, the same file as the input --eval {ev}; "
            "give another folder",
        ),
        "extract --out onto its list": (
            ["extract", str(listing), "--out", str(listing)],
            listing,
            _file_message("--out", listing, "SOURCE", listing),
        ),
        "predict --csv onto the picture": (
            ["predict", str(picture), "--csv", str(picture)],
            picture,
            _file_message("--csv", picture, "INPUT", picture),
        ),
        "predict --json onto a picture of a folder": (
            ["predict", str(photos), "--json", str(inside)],
            inside,
            _file_message("--json", inside, "INPUT", inside),
        ),
        "predict --annotate onto an input": (
            ["predict", str(photos), "--annotate", str(photos)],
            Path(f"{inside}.png"),
            f"error: --annotate {photos}: would write {inside}.png, the same file as the input INPUT {inside}.png; "
            "give another folder",
        ),
        "evaluate --json and --csv one file": (
            [*evaluate, "--json", str(tmp / "r.txt"), "--csv", str(tmp / "r.txt")],
            ev,
            f"error: --csv {tmp / 'r.txt'}: the same file as --json {tmp / 'r.txt'}; give each output its own path",
        ),
    }


CASES = ["evaluate --json onto the cache", "evaluate --json onto a symbolic link to the cache",
         "evaluate --csv onto a hard link of the cache", "evaluate --json onto the head's card",
         "fit-head --out onto --init-from", "head export --out onto the head", "search --json onto the cache",
         "audit --csv onto --against", "ablate --out-dir holding a link of an input", "extract --out onto its list",
         "predict --csv onto the picture", "predict --json onto a picture of a folder",
         "predict --annotate onto an input", "evaluate --json and --csv one file"]


@pytest.mark.parametrize("case", CASES)
def test_an_output_that_is_an_input_is_refused_before_any_work(case, data, tmp_path, monkeypatch):
    import expclip.ablate
    import expclip.stages.predict.api  # noqa: F401 - imported before the patch: they bind names on import

    def work(*args, **kwargs):
        raise AssertionError("work began before the outputs were checked")

    for target in WORK:
        monkeypatch.setattr(target, work)
    cases = _cases(data, tmp_path)
    assert list(cases) == CASES
    args, victim, message = cases[case]
    before = _sha(victim), os.stat(victim).st_ino
    assert _one_error(runner.invoke(app, args)) == message
    assert (_sha(victim), os.stat(victim).st_ino) == before
    assert not list(tmp_path.rglob("*.tmp-*")) and not list(data["eval"].parent.glob("*.faiss"))


def test_a_folder_output_may_hold_inputs_it_does_not_write(data, tmp_path):
    """The folder rule is exact: an input under another name than the outputs' stays and the command runs."""
    shutil.copy(data["eval"], tmp_path / "eval.h5")
    before = _sha(tmp_path / "eval.h5")
    result = runner.invoke(
        app, ["evaluate", "--baseline", "--cache", str(tmp_path / "eval.h5"), "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert _sha(tmp_path / "eval.h5") == before and [p.name for p in tmp_path.glob("*.png")] == [
        "toy-eval.png"]  # reports.confusion: one picture per dataset


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_annotation_names_keep_relative_paths_and_extensions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(*(Path(p) for p in ("in/a/001.jpg", "in/b/001.jpg", "in/x.jpg", "in/x.png", "in/v.mp4", "in/v.avi")))
    assert annotation_names(listing([Path("in")])) == {
        "in/a/001.jpg": Path("a/001.jpg.png"), "in/b/001.jpg": Path("b/001.jpg.png"),
        "in/v.avi": Path("v.avi.timeline.png"), "in/v.mp4": Path("v.mp4.timeline.png"),
        "in/x.jpg": Path("x.jpg.png"), "in/x.png": Path("x.png.png")}
    assert annotation_names(listing([Path("in/x.jpg")])) == {"in/x.jpg": Path("x.jpg.png")}
    assert annotation_names(listing([Path("in/a"), Path("in/b")])) == {  # two arguments: behind their own names
        "in/a/001.jpg": Path("a/001.jpg.png"), "in/b/001.jpg": Path("b/001.jpg.png")}
    assert annotation_names(listing([Path("in/a/001.jpg"), Path("in/b/001.jpg"), Path("in/v.mp4")])) == {
        "in/a/001.jpg": Path("a/001.jpg.png"), "in/b/001.jpg": Path("b/001.jpg.png"),
        "in/v.mp4": Path("in/v.mp4.timeline.png")}  # as many components as tell the arguments apart


def test_two_arguments_with_one_name_are_kept_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(Path("x/photos/1.jpg"), Path("y/photos/1.jpg"), Path("x/clip/000.jpg"), Path("y/clip/000.jpg"))
    assert annotation_names(listing([Path("x/photos"), Path("y/photos")])) == {
        "x/photos/1.jpg": Path("x/photos/1.jpg.png"), "y/photos/1.jpg": Path("y/photos/1.jpg.png")}
    assert annotation_names(listing([Path("x/clip"), Path("y/clip")], frame_folders=True)) == {
        "x/clip": Path("x/clip.timeline.png"), "y/clip": Path("y/clip.timeline.png")}
    assert annotation_names(listing([Path("x/clip")], frame_folders=True)) == {"x/clip": Path("clip.timeline.png")}


def test_two_outputs_of_one_run_never_share_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(Path("in/x.jpg"))
    one_file_once = {"in/x.jpg": Path("in/x.jpg.png")}
    assert annotation_names(listing([Path("in"), Path("in/x.jpg")])) == one_file_once
    with pytest.raises(ExpclipError) as raised:
        annotation_names(listing([Path("in/x.jpg"), Path("in/../in/x.jpg")]))
    name = Path(*tmp_path.parts[1:], "in", "x.jpg.png")
    assert (
        str(raised.value)
        == f"--annotate: in/x.jpg and in/../in/x.jpg would both be written as {name}; give each input once"
    )
    with pytest.raises(ExpclipError) as raised:
        distinct([("--json", tmp_path / "r"), ("--csv", None), ("--sheet", tmp_path / "in" / ".." / "r")])
    assert str(raised.value) == f"--sheet {tmp_path / 'in' / '..' / 'r'}: the same file as --json {tmp_path / 'r'}; " \
                                "give each output its own path"


def test_predict_annotates_a_folder_in_place_without_losing_a_picture(data, tmp_path, tiny_clip):
    """`a/001.jpg` + `b/001.jpg`, `x.jpg` + `x.png`: four inputs, four annotations beside them, no input changed."""
    folder = tmp_path / "inplace"
    source = sorted(data["faces"].rglob("*.png"))
    for name, picture in zip(("a/001.jpg", "b/001.jpg", "x.jpg", "x.png"), source, strict=False):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(picture).convert("RGB").save(folder / name)
    inputs = {p: _sha(p) for p in folder.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["predict", str(folder), "--clip-model", tiny_clip, "--detector", "none",
                                 "--device", "cpu", "--annotate", str(folder)])
    assert result.exit_code == 0, result.output
    wrote = sorted(line.removeprefix("wrote ") for line in result.output.splitlines() if line.startswith("wrote "))
    assert wrote == [str(folder / n) for n in ("a/001.jpg.png", "b/001.jpg.png", "x.jpg.png", "x.png.png")]
    assert all(_sha(p) == sha for p, sha in inputs.items())
    for made, picture in zip(wrote, ("a/001.jpg", "b/001.jpg", "x.jpg", "x.png"), strict=True):
        with Image.open(made) as boxed, Image.open(folder / picture) as original:
            assert boxed.format == "PNG" and boxed.size == original.size


def test_extract_into_a_picture_of_its_own_source_leaves_it(data, tmp_path, tiny_clip):
    """A folder SOURCE is not expanded before work; its pictures are kept by the cache check instead: an existing
    --out must be an expclip cache, and a picture is not even HDF5."""
    faces = tmp_path / "faces"
    shutil.copytree(data["faces"], faces)
    victim = sorted(faces.rglob("*.png"))[0]
    before = _sha(victim)
    result = runner.invoke(app, ["extract", str(faces), "--out", str(victim), "--clip-model", tiny_clip, "--no-teacher",
                                 "--num-workers", "0", "--device", "cpu"])
    assert _one_error(result).startswith(f"error: {victim}: not a readable HDF5 file")
    assert _sha(victim) == before and sorted(p.name for p in victim.parent.iterdir()) == ["0.png", "1.png"]
