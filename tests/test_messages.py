"""Honest one-line messages: refused CLIP weights, odd presets, empty pictures, user text printed as written
(no rich markup, no emoji codes), label maps that never echo their content, counts that add up, hints that fit."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from expclip import ZeroShotFER
from expclip.base.errors import ExpclipError
from expclip.cli import app
from expclip.demo.checkpoints import CLIP_WEIGHTS
from expclip.demo.synthetic import write_faces
from expclip.stages.predict.faces import Detector

runner = CliRunner()
TINY = ["--device", "cpu"]


@pytest.fixture(scope="module")
def refused(tmp_path_factory, tiny_clip) -> dict[str, tuple[str, Path]]:
    """Copies of the tiny CLIP whose weights torch or safetensors refuse: kind -> (local-dir name, weights file)."""
    good = Path(tiny_clip.removeprefix("local-dir:"))
    made = {}
    for kind in ("garbage", "pickle", "shapes"):
        folder = tmp_path_factory.mktemp(kind)
        shutil.copy(good / "open_clip_config.json", folder)
        made[kind] = (f"local-dir:{folder}", folder / CLIP_WEIGHTS)
    made["garbage"][1].write_bytes(b"\x00" * 7 + b"not safetensors")
    made["pickle"] = (made["pickle"][0], made["pickle"][1].with_name("open_clip_pytorch_model.bin"))
    torch.save({"visual.proj": print}, made["pickle"][1])  # a global that torch's safe loader refuses
    weights = load_file(good / CLIP_WEIGHTS)
    weights["ln_final.bias"] = torch.zeros(3)
    save_file(weights, made["shapes"][1])
    return made


REASONS = {
    "garbage": "Error while deserializing header: ",
    "pickle": "torch's safe loader (weights_only) refuses the file: ",  # then torch's own words, version-dependent
    "shapes": "Error(s) in loading state_dict for CLIP: size mismatch for ln_final.bias: copying a param with "
              "shape torch.Size([3]) from checkpoint, the shape in current model is torch.Size([64]).",
}


def _one_error_line(result, start: str) -> str:
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"error: {start}"), line
    return line


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_clip_weights_torch_refuses_are_one_line_in_extract_and_predict(refused, kind, tmp_path):
    name, weights = refused[kind]
    faces = tmp_path / "faces"
    write_faces(faces, ["happy"], 1, size=32)
    lead = f"cannot load open_clip model '{name}' with weights '{weights}': {REASONS[kind]}"
    extract = runner.invoke(app, ["extract", str(faces), "--out", str(tmp_path / "c.h5"), "--clip-model", name,
                                  "--no-teacher", "--num-workers", "0", *TINY])
    _one_error_line(extract, lead)
    predict = runner.invoke(app, ["predict", str(faces), "--clip-model", name, "--detector", "none", *TINY])
    _one_error_line(predict, lead)


def test_search_whose_clip_config_changed_since_extract_is_one_line(tiny_clip, tmp_path):
    """The weights file (hashed in the cache) is unchanged; its folder's config now builds another model. The
    extract before it: a summary whose counts add up, the cache's odd name printed as written."""
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip.removeprefix("local-dir:"), folder)
    faces = tmp_path / "faces"
    write_faces(faces, ["happy", "sad"], 1, size=32)
    (faces / "sad" / "broken.png").write_bytes(b"\x89PNG not really")
    cache = tmp_path / "[bold]a:x:b.h5"
    made = runner.invoke(app, ["extract", str(faces), "--out", str(cache), "--clip-model", f"local-dir:{folder}",
                               "--no-teacher", "--num-workers", "0", *TINY])
    assert made.exit_code == 0, made.output
    assert f"\nwrote {cache} (3 items: 2 encoded, 1 failed)\n" in made.output
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["layers"] = 3
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    found = runner.invoke(app, ["search", str(cache), "--text", "a smile", *TINY])
    line = _one_error_line(found, f"cannot load open_clip model 'local-dir:{folder}' with weights "
                                  f"'{folder / CLIP_WEIGHTS}': Error(s) in loading state_dict for CLIP: ")
    assert "Missing key(s)" in line


@pytest.mark.parametrize("field, value, message", [
    ("source", "/etc", "training.source '/etc' must be a path relative to the data root (not absolute, no '..'): "
                       "--data-root says where the datasets are"),
    ("source", "../other/train", "training.source '../other/train' must be a path relative to the data root "
                                 "(not absolute, no '..'): --data-root says where the datasets are"),
    ("folds", "2", "training.folds '2' is not of type int"),
    ("extends", "/tmp/_paper", "\"extends\": '/tmp/_paper' is not the name of a part: write the stem of a JSON file "
                               "beside the preset or of a packaged part, e.g. \"_paper\"; paths are not followed"),
    ("extends", "../_paper", "\"extends\": '../_paper' is not the name of a part: write the stem of a JSON file "
                             "beside the preset or of a packaged part, e.g. \"_paper\"; paths are not followed"),
    ("extends", "_nothing", "\"extends\": no _nothing.json beside it, nor a packaged part of that name"),
])
def test_a_preset_with_a_path_where_a_name_belongs_is_one_line(tmp_path, field, value, message):
    preset = {"extends": "_paper", "extract": {"clip_model": "ViT-B-32"}}
    if field == "extends":
        preset["extends"] = value
    else:
        preset["training"] = {"name": "CAER-S", "kind": "folder", "source": "CAER-S/train", "layout": "x", field: value}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    for check in (["--check"], ["--out", str(tmp_path / "out")]):
        result = runner.invoke(app, ["run", str(path), "--data-root", str(tmp_path), *check])
        assert result.exit_code == 2 and result.output == f"error: {path}: {message}\n"
    assert not (tmp_path / "out").exists()


def _empty_png(path: Path) -> Path:
    """A PNG whose header says 0×0 pixels (Pillow refuses to write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_a_picture_without_pixels_is_one_line_in_the_api_and_the_cli(tiny_clip, tmp_path):
    fer = ZeroShotFER(tiny_clip, detector="none", device="cpu")
    for detector in ("none", "haar"):
        fer.detector = Detector(detector)
        for size in ((0, 0), (5, 0)):
            with pytest.raises(ExpclipError) as e:
                fer.predict([Image.new("RGB", size)])
            assert str(e.value) == f"a picture of {size[0]}×{size[1]} pixels: no pixels to look for faces in"
    empty = _empty_png(tmp_path / "empty.png")
    result = runner.invoke(app, ["predict", str(empty), "--clip-model", tiny_clip, *TINY])
    assert result.exit_code == 2 and "Traceback" not in result.output  # the progress bar, then the error
    assert result.output.splitlines()[-1] == f"error: {empty}: cannot be read as an image (not an image)"


@pytest.mark.parametrize("name", ["a:x:b.csv", "[bold]c[bold].csv", "[red]:smile:"])
def test_user_text_in_messages_is_printed_as_written(tmp_path, name):
    """A label map's path in its error, and a cache's path in extract's summary: no markup, no emoji codes."""
    maps = tmp_path / "maps"
    maps.mkdir()
    label_map = maps / name
    label_map.write_text("lonely\n")
    cache = tmp_path / "c.h5"
    cache.write_bytes(b"")
    result = runner.invoke(app, ["evaluate", "--cache", str(cache), "--label-map", str(label_map)])
    assert result.exit_code == 2
    assert result.output == f"error: {label_map}:1: expected two columns `label,name`, both non-empty (found 1 field)\n"


def test_extract_summary_of_an_item_that_failed_says_none_was_encoded(tiny_clip, tmp_path):
    """Was "1 items, 1 encoded, 1 failed"."""
    only_bad = tmp_path / "bad"
    (only_bad / "x").mkdir(parents=True)
    (only_bad / "x" / "broken.png").write_bytes(b"")
    out = tmp_path / "bad.h5"
    result = runner.invoke(app, ["extract", str(only_bad), "--out", str(out), "--clip-model", tiny_clip,
                                 "--no-teacher", "--num-workers", "0", *TINY])
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"skipped x/broken.png: zero-byte file\nwrote {out} (1 item: 0 encoded, 1 failed)\n")


def test_a_label_map_error_never_prints_the_files_content(tmp_path):
    """`--label-map /etc/shadow` printed the file's first line: now the file, line and field only."""
    cache = tmp_path / "c.h5"
    cache.write_bytes(b"")
    secret = tmp_path / "shadow"
    for text, why in (
        ("root:$6$hunter2:19000:0:99999:7:::\n", "expected two columns `label,name`, both non-empty (found 1 field)"),
        (
            "# a comment\nroot,hunter2\n",
            "field 2 (name) is not a class; valid: Happiness, Sadness, "
            "Neutral, Anger, Surprise, Disgust, Fear, Contempt, Anxiety, "
            "Helplessness, Disappointment (case-insensitive, usual synonyms)",
        ),
        ("1,Happy\n1,hunter2\n", "field 1 (label) repeats the label of line 1"),
    ):
        secret.write_text(text)
        line = 2 if text.startswith(("#", "1,")) else 1
        for command in (
            ["evaluate", "--cache", str(cache)],
            ["ablate", str(cache), "--eval", str(cache), "--grid", "lr=0.1"],
        ):
            result = runner.invoke(app, [*command, "--label-map", str(secret)])
            assert result.exit_code == 2 and result.output == f"error: {secret}:{line}: {why}\n"
            assert "hunter2" not in result.output


def test_no_faces_hint_fits_the_detector(tiny_clip, tmp_path):
    """A video of no frames is an unreadable input under any detector (one line naming it, never 'use --detector
    none'); a picture where the face detector finds nothing suggests --detector none for pre-cropped faces."""
    video = tmp_path / "empty.avi"
    cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64)).release()
    for detector in ("none", "haar"):
        result = runner.invoke(app, ["predict", str(video), "--clip-model", tiny_clip, "--detector", detector, *TINY])
        assert result.exit_code == 2 and result.output.endswith(f"error: {video}: no frame could be decoded\n")
        assert "--detector none" not in result.output
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "blank.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "blank.png"), "--clip-model", tiny_clip, *TINY])
    assert result.exit_code == 0 and "no faces found (pre-cropped faces: --detector none)\n" in result.output


def test_tables_show_ids_labels_files_and_classes_as_written():
    from expclip.console import out
    from expclip.reports.neighbours import hits_table
    from expclip.reports.predictions import table

    hits = hits_table("text '[b]q'", [{"rank": 1, "score": 0.5, "id": "[b]a:x:.png", "label": "[red]"}])
    faces = table([{"kind": "face", "file": "/p/[b]c:x:.png", "frame": None, "face": 0, "box": [0, 0, 1, 1],
                    "top": "[i]", "probabilities": {"[i]": 0.9}}])
    with out.capture() as shown:
        out.print(hits)
        out.print(faces)
    text = shown.get()
    assert all(s in text for s in ("text '[b]q'", "[b]a:x:.png", "[red]", "[b]c:x:.png", "[i]"))
