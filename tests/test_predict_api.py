"""What the API and `expclip predict` take and give: numpy RGB/BGR/grayscale items, crops batched across pictures,
the detector's score and flat columns (pandas), video seconds and `--every` by time, provenance in JSON and CSV."""

import csv
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pictures import PHOTO, write_video
from PIL import Image
from typer.testing import CliRunner
from yunet_format import write_yunet_like

import expclip
from expclip import ZeroShotFER
from expclip.base.errors import ExpclipError
from expclip.cli import app
from expclip.stages.encoders.clip import ClipEncoder
from expclip.stages.predict.media import listing
from expclip.stages.predict.records import predict_inputs
from expclip.stages.shared import protocol
from expclip.stages.shared.heads import build_head, save_head

runner = CliRunner()


@pytest.fixture(scope="module")
def fer(tiny_clip) -> ZeroShotFER:
    return ZeroShotFER(tiny_clip, classes="happy,sad", detector="none", device="cpu", batch_size=4)


def probabilities(records: list[dict]) -> torch.Tensor:
    return torch.tensor([list(r["probabilities"].values()) for r in records])


def crops(n: int) -> list[Image.Image]:
    """n different face crops of the photo (shifted windows), so a batch mix-up would change the answers."""
    photo = Image.open(PHOTO).convert("RGB")
    return [photo.crop((100 + 9 * k, 60 + 5 * k, 400 + 9 * k, 360 + 5 * k)) for k in range(n)]


def passes(monkeypatch) -> list[int]:
    """The batch size of every CLIP image forward pass from now on."""
    seen: list[int] = []
    original = ClipEncoder.encode_images

    def counted(self, pixels):
        seen.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(ClipEncoder, "encode_images", counted)
    return seen


def test_numpy_rgb_bgr_and_grayscale_items_score_as_the_same_pictures(fer):
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    from_path = fer.predict(str(PHOTO))  # a bare str: one path
    assert len(from_path) == 1 and fer.predict(rgb) == from_path  # the decoded file's pixels as an array
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # what cv2.imread gives
    assert fer.predict(bgr, bgr=True) == from_path
    assert fer.predict(bgr) != from_path  # read as RGB, the channels are swapped: other scores
    gray = np.asarray(Image.open(PHOTO).convert("L"))
    assert gray.ndim == 2
    assert fer.predict(gray) == fer.predict(np.repeat(gray[:, :, None], 3, axis=2))  # replicated into RGB
    assert fer.predict([gray, rgb]) == [{**fer.predict(gray)[0], "image": 0}, {**from_path[0], "image": 1}]


def test_crops_are_encoded_in_batches_across_pictures_with_the_per_picture_answers(fer, monkeypatch):
    faces = crops(10)
    alone = [fer.predict(face)[0] for face in faces]
    seen = passes(monkeypatch)
    together = fer.predict(faces)
    assert seen == [4, 4, 2]  # batch_size=4: three passes for ten pictures, not ten
    assert [r["image"] for r in together] == list(range(10))
    torch.testing.assert_close(probabilities(together), probabilities(alone), rtol=1e-5, atol=1e-6)
    assert [r["top"] for r in together] == [r["top"] for r in alone]


def test_cli_batch_size_and_precision(tmp_path, tiny_clip, monkeypatch):
    folder = tmp_path / "faces"
    folder.mkdir()
    for k, face in enumerate(crops(7)):
        face.save(folder / f"{k}.png")
    seen = passes(monkeypatch)
    args = ["predict", str(folder), "--clip-model", tiny_clip, "--detector", "none", "--device", "cpu",
            "--classes", "happy,sad"]
    result = runner.invoke(app, [*args, "--batch-size", "3", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert seen[-3:] == [3, 3, 1] and len(seen) == 3  # 7 pre-cropped faces in 3 passes
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["records"]) == 7 and data["provenance"]["precision"] == "fp32"  # auto on the CPU
    result = runner.invoke(app, [*args, "--precision", "bf16", "--json", str(tmp_path / "bf16.json")])
    assert result.exit_code == 0, result.output
    half = json.loads((tmp_path / "bf16.json").read_text())
    assert half["provenance"]["precision"] == "bf16"
    torch.testing.assert_close(probabilities(half["records"]), probabilities(data["records"]), atol=0.03, rtol=0)
    assert len(seen) == 4  # the default batch on the CPU (64) holds all seven
    bad = runner.invoke(app, [*args, "--precision", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output
    with pytest.raises(ExpclipError, match=r"^--batch-size 0: encode at least 1 face per pass$"):
        ZeroShotFER(tiny_clip, device="cpu", batch_size=0)


def test_records_carry_the_detectors_score_in_flat_columns_for_pandas(tmp_path, tiny_clip):
    haar = ZeroShotFER(tiny_clip, classes="happy,sad", device="cpu")
    [face] = haar.predict(PHOTO)
    assert face["score"] is None  # the cascade gives no confidence
    assert [face[k] for k in "xywh"] == face["box"] and abs(face["x"] - 155) <= 3
    assert {c: face[f"p_{c}"] for c in ("happy", "sad")} == face["probabilities"]

    model = write_yunet_like(tmp_path / "yunet.onnx")
    pixels = np.zeros((250, 330, 3), np.uint8)
    pixels[64:96, 32:64] = 255
    pixels[160:192, 224:256] = 250
    yunet = ZeroShotFER(tiny_clip, classes="happy,sad", detector="yunet", detector_model=model, device="cpu")
    found = yunet.predict(pixels)
    detector = cv2.FaceDetectorYN.create(str(model), "", (330, 250))  # OpenCV's own answer, read directly
    _, rows = detector.detect(np.ascontiguousarray(pixels[:, :, ::-1]))
    assert [r["score"] for r in found] == pytest.approx([float(rows[0][-1]), float(rows[1][-1])])
    assert [r["score"] for r in found] == pytest.approx([1.0, 250 / 255], abs=1e-3)  # the stand-in's brightness

    records = found + haar.predict([PHOTO, PHOTO])
    try:
        import pandas
    except ImportError:
        pytest.skip("pandas is not installed: the DataFrame assertion did not run (pandas stays optional)")
    table = pandas.DataFrame(records)
    assert len(table) == 4 and list(table["p_happy"]) == [r["probabilities"]["happy"] for r in records]
    assert list(table["score"].isna()) == [False, False, True, True] and list(table["w"]) == [r["w"] for r in records]


def test_video_records_carry_frames_and_seconds_and_every_defaults_to_half_a_second(fer, tmp_path):
    grays = [Image.fromarray(np.full((112, 96, 3), 4 * k, np.uint8)) for k in range(40)]
    video = write_video(tmp_path / "v.avi", grays)
    records, _ = predict_inputs(fer, listing([video]))  # the default --every: 0.5 s = 5 frames at 10 fps
    faces = [r for r in records if r["kind"] == "face"]
    assert [r["frame"] for r in faces] == list(range(0, 40, 5))
    assert [r["seconds"] for r in faces] == [i / 10 for i in range(0, 40, 5)]
    [clip] = [r for r in records if r["kind"] == "clip"]
    assert clip["seconds"] == [i / 10 for i in protocol.frame_indices(40)]
    [track] = [r for r in records if r["kind"] == "track"]
    assert track["seconds"] == [i / 10 for i in track["frames"]]
    listed = listing([video])
    assert [r["frame"] for r in predict_inputs(fer, listed, every="1.2s")[0] if r["kind"] == "face"] == [0, 12, 24, 36]
    assert [r["frame"] for r in predict_inputs(fer, listed, every=15)[0] if r["kind"] == "face"] == [0, 15, 30]

    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(5):
        Image.fromarray(np.full((40, 40, 3), 30 * k, np.uint8)).save(frames / f"{k:02d}.png")
    records, _ = predict_inputs(fer, listing([frames], frame_folders=True))  # no frame rate: every frame, no seconds
    assert [(r["frame"], r["seconds"]) for r in records if r["kind"] == "face"] == [(k, None) for k in range(5)]
    assert [r["seconds"] for r in records if r["kind"] != "face"] == [None, None]
    records, _ = predict_inputs(fer, listing([frames], frame_folders=True), fps=4.0)  # 0.5 s = 2 frames at 4 fps
    assert [(r["frame"], r["seconds"]) for r in records if r["kind"] == "face"] == [(0, 0.0), (2, 0.5), (4, 1.0)]


@pytest.mark.parametrize(("args", "said"), [
    (["--every", "0"], "error: --every '0': give frames (a whole number, e.g. 10) or seconds (e.g. 0.5s)"),
    (["--every", "half"], "error: --every 'half': give frames (a whole number, e.g. 10) or seconds (e.g. 0.5s)"),
    (["--every", "-1s"], "error: --every '-1s': give frames (a whole number, e.g. 10) or seconds (e.g. 0.5s)"),
    (["--fps", "0"], "error: --fps 0.0: give the frame folders' frames per second, a number above 0"),
])
def test_bad_every_and_fps_are_one_line_before_any_model_loads(args, said, tmp_path):
    result = runner.invoke(app, ["predict", str(PHOTO), "--clip-model", f"local-dir:{tmp_path}", *args])
    assert result.exit_code == 2 and result.output == said + "\n"  # the missing CLIP was never looked for


def write_head(tiny_clip: str, path: Path) -> Path:
    """A random linear head that records the tiny CLIP as its encoder, as fit-head records a cache's."""
    from expclip.stages.encoders.clip import identity

    torch.manual_seed(0)
    _, config = identity(tiny_clip, None, "model", "fp32")
    save_head(build_head("linear", 32, 48), "linear", {"clip": config, "logit_scale": 20.0}, path)
    return path


def test_json_and_csv_carry_provenance(tmp_path, tiny_clip):
    head = write_head(tiny_clip, tmp_path / "h")
    shutil.copy(PHOTO, tmp_path / "p.jpg")
    result = runner.invoke(app, ["predict", str(tmp_path / "p.jpg"), "--head", str(head), "--device", "cpu",
                                 "--classes", "happy,sad", "--json", str(tmp_path / "o.json"),
                                 "--csv", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "o.json").read_text())
    folder = Path(tiny_clip.removeprefix("local-dir:")).resolve()
    [weights] = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")]
    want = {
        "expclip_version": expclip.__version__, "clip_model": f"local-dir:{folder}", "clip_pretrained": str(weights),
        "clip_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "clip_transform": "model",
        "precision": "fp32", "head": str(head),
        "head_sha256": hashlib.sha256(head.with_suffix(".safetensors").read_bytes()).hexdigest(),
        "prompt_set": "ensemble_ten", "classes": ["happy", "sad"], "detector": "haar", "detector_model": None,
    }
    assert data["provenance"] == want and [r["kind"] for r in data["records"]] == ["face"]
    [row] = list(csv.DictReader((tmp_path / "o.csv").open()))
    assert {k: row[k] for k in want} == {**{k: str(v) for k, v in want.items()}, "classes": "happy,sad",
                                         "detector_model": ""}
    assert row["score"] == "" and row["seconds"] == "" and math.isclose(float(row["p_sad"]),
                                                                       data["records"][0]["p_sad"])


def test_the_readme_pandas_example_runs_after_the_api_example(tmp_path, tiny_clip, monkeypatch):
    """The README's two blocks, as written, with the tiny CLIP and a head standing in for the real ones."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    [api, frame] = [re.findall(rf"<!-- {name}-example -->\n```python\n(.*?)```", readme, re.S)[0]
                    for name in ("api", "pandas")]
    shutil.copy(PHOTO, tmp_path / "photo.jpg")
    write_head(tiny_clip, tmp_path / "heads" / "b16")
    monkeypatch.chdir(tmp_path)
    printed = []
    space = {"print": lambda *a: printed.append(a)}
    exec(compile(api.replace('"ViT-B-16"', repr(tiny_clip)).replace('clip_pretrained="openai", ', ""), "README.md",
                 "exec"), space)
    assert [p[0] for p in printed[:2]] == [[155, 105, 222, 222]] * 2  # the file and OpenCV's BGR array: one face
    assert printed[0][2] == printed[1][2]  # the same probabilities
    try:
        import pandas  # noqa: F401
    except ImportError:
        pytest.skip("pandas is not installed: the README's pandas block did not run (pandas stays optional)")
    exec(compile(frame, "README.md", "exec"), space)
    table = printed[-1][0]
    assert len(table) == 1 and table.iloc[0]["x"] == 155
    assert table.iloc[0]["p_sad"] == pytest.approx(printed[0][2]["sad"], rel=1e-5)
