"""predict and the Python API: the bundled detector on a real photo, scores against an independent computation,
videos and frame folders by the paper's 16-frame rule, outputs, and the README's example."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import FRAMES_OF_40, SEVEN
from pictures import PHOTO, decode, detect_each, small_photo, write_video
from PIL import Image
from typer.testing import CliRunner
from yunet_format import write_yunet_like

from expclip import ZeroShotFER
from expclip.base.errors import ExpclipError
from expclip.cli import app
from expclip.stages.predict.api import class_prompts
from expclip.stages.predict.faces import Box, Detector
from expclip.stages.predict.tracks import iou, link
from expclip.stages.shared import protocol
from expclip.stages.shared.heads import build_head, load_head, save_head

runner = CliRunner()


def test_bundled_detector_finds_the_one_face_of_a_real_photo():
    [box] = Detector("haar").detect(Image.open(PHOTO))
    assert abs(box.x - 155) <= 3 and abs(box.y - 105) <= 3 and abs(box.w - 222) <= 4 and box.w == box.h


def margin_crop(image: Image.Image, box: list[int]) -> Image.Image:
    """The documented crop, written out: the box grown by 20 % of its side on each side, squared, clipped."""
    x, y, w, h = box
    side, cx, cy = max(w, h) * 1.4, x + w / 2, y + h / 2
    return image.crop((max(0, round(cx - side / 2)), max(0, round(cy - side / 2)),
                       min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))))


@pytest.fixture(scope="module")
def head(tmp_path_factory, tiny_clip) -> Path:
    """A random linear head that records the tiny CLIP as its encoder (as fit-head records a cache's) and a
    logit scale of 20."""
    from expclip.stages.encoders.clip import identity

    torch.manual_seed(0)
    key, config = identity(tiny_clip, None, "model", "fp32")
    path = tmp_path_factory.mktemp("head") / "h"
    save_head(build_head("linear", 32, 48), "linear", {"clip": config, "clip_key": key, "logit_scale": 20.0}, path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_clip) -> tuple:
    """The tiny CLIP as open_clip itself builds it (model, preprocess, tokenizer): the expected values' encoder,
    built once for the module, with the features of the prompt lists it has encoded (every track and call
    scores the same prompts)."""
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    return model, preprocess, open_clip.get_tokenizer(tiny_clip), {}


def expected(reference: tuple, w: torch.Tensor, crops: list[Image.Image], classes: list[str], prompt_set: str,
             scale: float, clip: bool = False) -> torch.Tensor:
    """Probabilities by the paper's rule with open_clip directly: mean over a class's prompts of
    cos(W·image, W·prompt) (a clip: W·mean of its frames), times the scale, softmaxed over classes."""
    model, preprocess, tokenizer, encoded = reference
    with torch.no_grad():
        x = model.encode_image(torch.stack([preprocess(c) for c in crops])).double()
        if clip:
            x = x.mean(0, keepdim=True)
        xi = F.normalize(x @ w.T, dim=-1)
        scores = []
        for name in classes:
            prompts = tuple(class_prompts(name, protocol.prompt_sets()[prompt_set]))
            if prompts not in encoded:
                encoded[prompts] = model.encode_text(tokenizer(list(prompts))).double()
            t = F.normalize(encoded[prompts] @ w.T, dim=-1)
            scores.append((xi @ t.T).mean(1))
    return torch.softmax(scale * torch.stack(scores, 1), dim=1).float()


def test_api_scores_equal_an_independent_computation(tiny_clip, head, reference):
    classes = ["happy", "Sadness", "boredom"]  # a synonym, a protocol name, and a free word
    fer = ZeroShotFER(tiny_clip, head=head, classes=classes, prompt_set="ensemble_five", device="cpu")
    [face] = fer.predict([PHOTO])
    w = load_head(head).linear_weight().double()
    want = expected(reference, w, [margin_crop(Image.open(PHOTO).convert("RGB"), face["box"])], classes,
                    "ensemble_five", 20.0)[0]
    got = torch.tensor([face["probabilities"][c] for c in classes])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert face["top"] == classes[int(want.argmax())] and face["image"] == 0 and face["face"] == 0
    assert fer.classes == classes and fer.scores(fer.encode_images([Image.open(PHOTO)])).shape == (1, 3)


def test_class_prompts_use_the_sets_prompts_or_its_templates():
    five = protocol.prompt_sets()["ensemble_five"]
    assert class_prompts("happy", five) == five["Happiness"] and class_prompts("ANGRY", five) == five["Anger"]
    made = class_prompts("Boredom", five)
    assert made and all("boredom" in p for p in made)
    assert made == [p.replace("happiness", "boredom") for p in five["Happiness"] if "happiness" in p]


def test_cli_predict_on_a_video_a_photo_and_a_frame_folder(tmp_path, tiny_clip, head, reference):
    video = write_video(tmp_path / "talk.avi", 40)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(5):
        small_photo().save(frames / f"{i:03d}.jpg")
    result = runner.invoke(
        app,
        [
            "predict",
            str(video),
            str(PHOTO),
            "--head",
            str(head),
            "--every",
            "10",
            "--json",
            str(tmp_path / "p.json"),
            "--csv",
            str(tmp_path / "p.csv"),
            "--annotate",
            str(tmp_path / "ann"),
            "--device",
            "cpu",
            "--classes",
            "happy,sad,angry",
        ],
    )
    assert result.exit_code == 0, result.output  # no --clip-model: the head's recorded CLIP
    work = len(set(range(0, 40, 10)) | set(FRAMES_OF_40)) + 1  # the video's frames read, the photo
    assert f"{work}/{work}" in result.output and "frames/s" in result.output  # the bar moves per frame
    records = json.loads((tmp_path / "p.json").read_text())["records"]
    faces = [r for r in records if r["kind"] == "face" and r["file"] == str(video)]
    assert [r["frame"] for r in faces] == [0, 10, 20, 30] and all(r["face"] == 0 for r in faces)
    [whole] = [r for r in records if r["kind"] == "clip"]
    assert whole["frames"] == FRAMES_OF_40 and whole["frames_with_a_face"] == 16
    [photo] = [r for r in records if r["file"] == str(PHOTO)]
    assert photo["frame"] is None and abs(photo["box"][0] - 155) <= 3
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == ("kind,file,frame,face,track,x,y,w,h,top,p_happy,p_sad,p_angry,reason,seconds,score,"
                        "expclip_version,clip_model,clip_pretrained,clip_sha256,clip_transform,precision,head,"
                        "head_sha256,prompt_set,classes,detector,detector_model")
    assert len(lines) == 1 + len(records)
    [track] = [r for r in records if r["kind"] == "track"]  # one person: one track, the same faces as the clip's
    assert track["frames"] == whole["frames"] and len(track["boxes"]) == 16 and track["track"] == 0
    assert track["probabilities"] == whole["probabilities"]
    assert {p.name for p in (tmp_path / "ann").iterdir()} == {"grace_hopper.jpg.png", "talk.avi.timeline.png"}
    with Image.open(tmp_path / "ann" / "talk.avi.timeline.png") as timeline:
        assert timeline.size == (800, 300)  # one track, one panel
    with Image.open(tmp_path / "ann" / "grace_hopper.jpg.png") as boxed:
        assert boxed.size == Image.open(PHOTO).size

    w = load_head(head).linear_weight().double()
    pictures = decode(video)
    sampled = [pictures[i] for i in protocol.frame_indices(len(pictures))]
    crops = [margin_crop(p, boxes[0].as_list()) for p, boxes in zip(sampled, detect_each(sampled))]  # the largest
    want = expected(reference, w, crops, ["happy", "sad", "angry"], "ensemble_ten", 20.0, clip=True)[0]
    torch.testing.assert_close(torch.tensor(list(whole["probabilities"].values())), want, rtol=1e-3, atol=1e-4)

    result = runner.invoke(app, ["predict", str(frames), "--frame-folders", "--head", str(head), "--device", "cpu",
                                 "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "f.json").read_text())["records"]
    assert [r["frame"] for r in records if r["kind"] == "face"] == [0, 1, 2, 3, 4]
    assert [r["frames"] for r in records if r["kind"] == "clip"] == [[0] * 16]  # <= 16 frames: frame 0 sixteen times


def test_tracks_follow_each_face_by_overlap():
    """Hand-made boxes: two faces whose sizes swap, one missing for a frame, one that jumps, and a frame
    with two candidates for one track (the better overlap wins, the other starts a track)."""
    a = [Box(10, 10, 40, 40), Box(12, 10, 44, 44), Box(14, 12, 30, 30), Box(100, 100, 40, 40)]  # jumps in frame 3
    b = [Box(200, 10, 30, 30), Box(200, 12, 50, 50), None, Box(204, 12, 50, 50)]  # absent in frame 2
    frames = [[(box, k) for box in boxes if box is not None] for k, boxes in enumerate(zip(a, b))]
    frames[1].append((Box(20, 14, 40, 40), "rival"))  # overlaps a's track less than a's own box does
    tracks = link(frames)
    assert [(t.positions, t.faces) for t in tracks] == [([0, 1, 2], [0, 1, 2]), ([0, 1, 3], [0, 1, 3]),
                                                         ([1], ["rival"]), ([3], [3])]
    assert tracks[0].boxes == a[:3] and tracks[3].boxes == [a[3]]
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 10, 10)) == pytest.approx(50 / 150) and iou(a[0], b[0]) == 0.0


def test_a_video_of_two_people_gets_a_verdict_per_face_track(tmp_path, tiny_clip, head, reference):
    """Two faces whose sizes swap halfway (the largest face of each frame changes person): one track each,
    scored by the paper's rule over that person's faces alone (computed here from open_clip directly).
    The frames are 280x160 (faces of ~58 and ~50 px), the left person left of x = 140."""
    photo = Image.open(PHOTO).convert("RGB")
    frames = []
    for i in range(40):
        big, small = photo.resize((128, 150)), photo.resize((102, 120))
        left, right = (big, small) if i < 20 else (small, big)
        canvas = Image.new("RGB", (280, 160), (128, 128, 128))
        canvas.paste(left, (5 + 3 * (i % 2), 5))
        canvas.paste(right, (145 + 3 * (i % 2), 5))
        frames.append(canvas)
    video = write_video(tmp_path / "two.avi", frames)
    result = runner.invoke(app, ["predict", str(video), "--head", str(head), "--every", "20", "--device", "cpu",
                                 "--json", str(tmp_path / "t.json"), "--csv", str(tmp_path / "t.csv"),
                                 "--annotate", str(tmp_path / "ann")])
    assert result.exit_code == 0, result.output
    assert "track 0" in result.output and "track 1" in result.output
    records = json.loads((tmp_path / "t.json").read_text())["records"]
    tracks = [r for r in records if r["kind"] == "track"]
    sampled = FRAMES_OF_40
    assert [t["track"] for t in tracks] == [0, 1] and all(t["frames"] == sampled for t in tracks)
    assert all(x < 140 for x, _, _, _ in tracks[0]["boxes"]) and all(x > 140 for x, _, _, _ in tracks[1]["boxes"])
    w = load_head(head).linear_weight().double()
    decoded = decode(video)
    detected = dict(zip(sampled, detect_each([decoded[i] for i in sampled])))
    for track, on_the_left in zip(tracks, (True, False)):
        crops = []
        for i in sampled:
            [box] = [b for b in detected[i] if (b.x < 140) == on_the_left]
            crops.append(margin_crop(decoded[i], box.as_list()))
        want = expected(reference, w, crops, protocol.class_order()[:7], "ensemble_ten", 20.0, clip=True)[0]
        got = torch.tensor([track["probabilities"][c] for c in protocol.class_order()[:7]])
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    rows = [line.split(",") for line in (tmp_path / "t.csv").read_text().splitlines()]
    assert [(r[0], r[4]) for r in rows if r[0] == "track"] == [("track", "0"), ("track", "1")]
    faces = [r for r in records if r["kind"] == "face"]  # frames 0 and 20: each face carries its person's track
    assert [r["frame"] for r in faces] == [0, 0, 20, 20] and [r["face"] for r in faces] == [0, 1, 0, 1]
    assert all(r["track"] == (0 if r["box"][0] < 140 else 1) for r in faces)
    assert [faces[0]["track"], faces[2]["track"]] == [0, 1]  # the largest face changed person at frame 20
    with Image.open(tmp_path / "ann" / "two.avi.timeline.png") as timeline:
        assert timeline.size == (800, round(100 * (0.8 + 2.2 * 2)))  # one panel per track


def test_pre_cropped_faces_and_bad_inputs(tmp_path, tiny_clip):
    crop = tmp_path / "faces" / "a.png"
    crop.parent.mkdir()
    Image.open(PHOTO).crop((120, 70, 410, 360)).save(crop)
    result = runner.invoke(app, ["predict", str(crop.parent), "--clip-model", tiny_clip, "--detector", "none",
                                 "--device", "cpu", "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    [record] = json.loads((tmp_path / "c.json").read_text())["records"]
    assert record["box"] == [0, 0, 290, 290] and set(record["probabilities"]) == set(SEVEN)
    (tmp_path / "notes.txt").write_text("x")
    bad = runner.invoke(app, ["predict", str(tmp_path / "notes.txt"), "--clip-model", tiny_clip, "--device", "cpu"])
    assert bad.exit_code == 2 and "notes.txt: neither an image" in " ".join(bad.output.split())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    bad = runner.invoke(app, ["predict", str(tmp_path / "broken.jpg"), "--clip-model", tiny_clip, "--device", "cpu"])
    assert bad.exit_code == 2 and "broken.jpg: cannot be read as an image" in " ".join(bad.output.split())
    bad = runner.invoke(
        app, ["predict", str(PHOTO), "--clip-model", tiny_clip, "--detector", "yunet", "--device", "cpu"]
    )
    assert bad.exit_code == 2 and "--detector yunet needs --detector-model FILE.onnx" in bad.output
    with pytest.raises(ExpclipError, match="name at least two classes"):
        ZeroShotFER(tiny_clip, classes=["happy"], device="cpu")


def test_yunet_detector_runs_a_model_in_yunets_format(tmp_path, tiny_clip):
    """`--detector yunet` through OpenCV's FaceDetectorYN on a stand-in model (tests/yunet_format.py) whose faces
    are white squares on its 32-pixel grid: both found, largest first, cropped with the margin; unreadable and
    non-YuNet models end in one line naming the file."""
    model = write_yunet_like(tmp_path / "yunet.onnx")
    pixels = np.zeros((250, 330, 3), np.uint8)  # not a multiple of 32: FaceDetectorYN pads
    pixels[64:96, 32:64] = 255
    pixels[160:192, 224:256] = 250
    Image.fromarray(pixels).save(tmp_path / "squares.png")
    args = ["--clip-model", tiny_clip, "--detector", "yunet", "--device", "cpu"]
    result = runner.invoke(app, ["predict", str(tmp_path / "squares.png"), *args, "--detector-model", str(model),
                                 "--json", str(tmp_path / "y.json")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "y.json").read_text())["records"]
    assert [r["box"] for r in records] == [[32, 64, 32, 32], [224, 160, 32, 32]]
    api = ZeroShotFER(tiny_clip, detector="yunet", detector_model=model, device="cpu")
    picture = Image.open(tmp_path / "squares.png")
    expected_crop = np.asarray(margin_crop(picture, [32, 64, 32, 32]))
    assert np.array_equal(np.asarray(api.faces(picture)[0][1]), expected_crop)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    bad = runner.invoke(app, ["predict", str(PHOTO), *args, "--detector-model", str(tmp_path / "bad.onnx")])
    assert bad.exit_code == 2 and "bad.onnx: OpenCV cannot read it as an ONNX model" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output


def test_the_readme_api_example_runs(tmp_path, tiny_clip, head, monkeypatch):
    """The README's example, as written, with the tiny CLIP and head standing in for the real ones."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    [code] = re.findall(r"<!-- api-example -->\n```python\n(.*?)```", readme, re.S)
    shutil.copy(PHOTO, tmp_path / "photo.jpg")
    (tmp_path / "heads").mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(head.with_suffix(suffix), tmp_path / "heads" / f"b16{suffix}")
    monkeypatch.chdir(tmp_path)
    code = code.replace('"ViT-B-16"', repr(tiny_clip)).replace('clip_pretrained="openai", ', "")
    printed = []
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    assert printed and printed[0][0] == [155, 105, 222, 222]


def test_unreadable_files_in_a_folder_are_skipped_and_recorded_and_the_rest_kept(tmp_path, tiny_clip):
    """Real broken bytes beside good pictures: a truncated JPEG, a 0-byte .mp4, an .avi whose frames are zeros. The good
    pictures' records equal those of a run without the broken files; every input broken is one line, exit 2."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "a.jpg")
    Image.open(PHOTO).crop((120, 70, 410, 360)).save(folder / "c.png")
    data = PHOTO.read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])
    (folder / "d.mp4").write_bytes(b"")
    video = write_video(tmp_path / "whole.avi", 3).read_bytes()
    frames_at = video.index(b"movi") + 4  # the header (3 frames) kept, every frame's bytes zeroed
    (folder / "e.avi").write_bytes(video[:frames_at] + bytes(len(video) - frames_at))
    args = ["--clip-model", tiny_clip, "--device", "cpu", "--classes", "happy,sad"]
    result = runner.invoke(app, ["predict", str(folder), *args, "--json", str(tmp_path / "p.json"),
                                 "--csv", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "p.json").read_text())["records"]
    failed = {Path(r["file"]).name: r["reason"] for r in records if r["kind"] == "failed"}
    assert set(failed) == {"b.jpg", "d.mp4", "e.avi"}
    assert failed["b.jpg"].startswith("cannot be read as an image (truncated or corrupt image")
    assert failed["d.mp4"] == "cannot be opened as a video"
    assert failed["e.avi"] == "no frame could be decoded"
    said = " ".join(result.output.split())
    assert f"skipped {folder / 'd.mp4'}: cannot be opened as a video" in said and "3 of 5 inputs skipped" in said
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [(r["kind"], Path(r["file"]).name, r["reason"]) for r in rows if r["kind"] == "failed"] == \
        [("failed", name, failed[name]) for name in ("b.jpg", "d.mp4", "e.avi")]
    assert all(r["reason"] == "" and r["p_happy"] for r in rows if r["kind"] == "face")
    for name in ("b.jpg", "d.mp4", "e.avi"):
        (folder / name).unlink()
    clean = runner.invoke(app, ["predict", str(folder), *args, "--json", str(tmp_path / "clean.json")])
    assert clean.exit_code == 0, clean.output
    assert [r for r in records if r["kind"] != "failed"] == json.loads((tmp_path / "clean.json").read_text())["records"]
    assert any(Path(r["file"]).name == "c.png" for r in records)  # the good files did give faces

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(data[:300])
    (bad / "y.mp4").write_bytes(b"")
    result = runner.invoke(app, ["predict", str(bad), *args, "--json", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and not (tmp_path / "bad.json").exists()
    line = " ".join(result.output.split())
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert f"error: none of the 2 inputs could be read ({bad / 'x.jpg'}: cannot be read as an image (" in line


def test_a_run_lists_each_input_folder_once_and_scores_what_naming_each_file_scores(tmp_path, tiny_clip, monkeypatch):
    """The output check, the annotation names and the run read one listing: every folder under INPUT is listed
    (os.scandir or os.listdir, whichever walks it) once, and the records equal a run given the same files by name."""
    import os

    folder, frames = tmp_path / "in", [tmp_path / "clip-a", tmp_path / "clip-b"]
    pictures = [folder / "a.png", folder / "sub" / "b.png", folder / "sub" / "deeper" / "c.jpg",
                folder / "album.png" / "d.png"]  # a folder named like a picture is a folder
    for k, path in enumerate([*pictures, *(f / f"{i}.png" for f in frames for i in range(2))]):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 20 * k, np.uint8)).save(path)
    (folder / "notes.txt").write_text("not an input")
    listed: list[str] = []
    for name in ("scandir", "listdir"):
        real = getattr(os, name)

        def counted(path=".", real=real):
            listed.append(os.fspath(path))
            return real(path)

        monkeypatch.setattr(os, name, counted)
    fer = ZeroShotFER(tiny_clip, classes=["happy", "sad"], detector="none", device="cpu")
    monkeypatch.setattr("expclip.stages.predict.api.ZeroShotFER", lambda *a, **k: fer)  # loaded once for 3 runs
    args = ["--clip-model", tiny_clip, "--detector", "none", "--device", "cpu", "--classes", "happy,sad"]

    def records(*given: str, more: tuple[str, ...] = ()) -> list[dict]:
        result = runner.invoke(app, ["predict", *given, *args, "--json", str(tmp_path / "p.json"), *more])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / "p.json").read_text())["records"]

    walked = records(str(folder), more=("--annotate", str(tmp_path / "ann")))
    inputs = [str(tmp_path / p) for p in ("in", "in/album.png", "in/sub", "in/sub/deeper", "clip-a", "clip-b")]
    assert sorted(p for p in listed if p in inputs) == inputs[:4]
    assert [r["file"] for r in walked] == [str(p) for p in sorted(pictures)]
    written = [p for p in (tmp_path / "ann").rglob("*") if p.is_file()]
    assert sorted(p.relative_to(tmp_path / "ann").as_posix() for p in written) == \
        ["a.png.png", "album.png/d.png.png", "sub/b.png.png", "sub/deeper/c.jpg.png"]
    assert walked == records(*map(str, sorted(pictures)))
    listed.clear()
    monkeypatch.setattr("expclip.reports.predictions.annotate", lambda *a: [])  # timelines: slow, and not the point
    clips = records(*map(str, frames), more=("--frame-folders", "--annotate", str(tmp_path / "ann-clips")))
    assert sorted(p for p in listed if p in inputs) == inputs[4:]
    assert [r["file"] for r in clips if r["kind"] == "clip"] == [str(f) for f in frames]
