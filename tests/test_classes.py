"""Class lists and inputs mean what they say: one rule for `--classes` and the API (a str is one comma list, no
class twice after synonyms, never empty), and `predict` refuses what is not a picture with one line."""

import shutil

import numpy as np
import pytest
from pictures import PHOTO
from PIL import Image
from typer.testing import CliRunner

from expclip import ZeroShotFER
from expclip.base.errors import ExpclipError
from expclip.cli import app
from expclip.stages.predict.api import BASIC, class_names

runner = CliRunner()


@pytest.mark.parametrize("given, names", [
    ("happy,sad", ["happy", "sad"]),
    (" happy , sad ,", ["happy", "sad"]),  # a trailing comma or spaces name no class
    (["happy", "sad", "bored"], ["happy", "sad", "bored"]),
    (("Happiness", "boredom"), ["Happiness", "boredom"]),
])
def test_a_str_is_one_comma_list_and_a_sequence_its_names(given, names):
    assert class_names(given) == names


@pytest.mark.parametrize("given, message", [
    ("happy,sad,happy", "--classes: 'happy' is named twice; name each class once"),
    ("angry,sad,Anger", "--classes: 'angry' and 'Anger' are both Anger; name each class once"),
    (["joy", "sad", "HAPPY", "Sadness"],
     "--classes: 'joy' and 'HAPPY' are both Happiness; 'sad' and 'Sadness' are both Sadness; name each class once"),
    ("boredom,sad,Boredom", "--classes: 'boredom' and 'Boredom' are both boredom; name each class once"),
    ("very  bored,very bored", "--classes: 'very  bored' and 'very bored' are both very bored; name each class once"),
    ([], "--classes: name at least two classes (got none)"),
    ("", "--classes: name at least two classes (got none)"),
    (" , ", "--classes: name at least two classes (got none)"),
    ("happy", "--classes: name at least two classes (got happy)"),
    (7, "--classes: give a list of class names (str) or one comma-separated str, not int"),
    ({"happy", "sad"}, "--classes: give a list of class names (str) or one comma-separated str, not set"),
    (["happy", 3], "--classes: give a list of class names (str) or one comma-separated str, not list"),
])
def test_duplicates_after_synonyms_and_empty_lists_are_refused(given, message):
    with pytest.raises(ExpclipError) as refused:
        class_names(given)
    assert str(refused.value) == message


def test_the_cli_refuses_duplicate_classes_before_loading_a_model(tmp_path):
    """The CLIP named does not exist: the classes' line comes first, so nothing was loaded."""
    for classes, said in (("happy,sad,happy", "'happy' is named twice; name each class once"),
                          ("angry,Anger", "'angry' and 'Anger' are both Anger; name each class once"),
                          ("", "name at least two classes (got none)")):
        result = runner.invoke(app, ["predict", str(PHOTO), "--clip-model", f"local-dir:{tmp_path / 'none'}",
                                     "--classes", classes, "--device", "cpu", "--json", str(tmp_path / "p.json")])
        assert result.exit_code == 2 and result.output == f"error: --classes: {said}\n", result.output
        assert not (tmp_path / "p.json").exists()


@pytest.fixture(scope="module")
def fer(tiny_clip) -> ZeroShotFER:
    return ZeroShotFER(tiny_clip, classes="happy,sad", detector="none", device="cpu")


def test_the_api_takes_a_comma_str_and_refuses_an_empty_list_or_duplicates(fer, tiny_clip):
    assert fer.classes == ["happy", "sad"]
    [face] = fer.predict([PHOTO])
    assert list(face["probabilities"]) == ["happy", "sad"]
    with pytest.raises(ExpclipError, match=r"^--classes: name at least two classes \(got none\)$"):
        ZeroShotFER(tiny_clip, classes=[], device="cpu")
    with pytest.raises(ExpclipError, match="^--classes: 'angry' and 'Anger' are both Anger; name each class once$"):
        fer.set_classes(["angry", "Anger"])
    assert fer.classes == ["happy", "sad"]  # unchanged by the refused call
    assert ZeroShotFER(tiny_clip, detector="none", device="cpu").classes == BASIC  # None: the seven defaults


def test_predict_takes_one_path_or_picture_and_refuses_other_types_in_one_line(fer, tmp_path):
    whole = fer.predict([PHOTO])
    assert fer.predict(str(PHOTO)) == whole and fer.predict(PHOTO) == whole  # a bare path is one picture
    assert fer.predict(Image.open(PHOTO)) == whole and fer.predict((p for p in [str(PHOTO)])) == whole
    wanted = "give paths, PIL images or uint8 numpy arrays (H×W×3 RGB, bgr=True for OpenCV's BGR; H×W grayscale)"
    for given, message in (
        (5, "images: got int"),
        ([PHOTO, 3.0], "images[1]: got float"),
        ([np.zeros((4, 4, 3))], "images[0]: a numpy array of float64"),
        (np.zeros((4, 4, 4), np.uint8), "images: a numpy array of shape 4×4×4"),
        (np.zeros((2, 4, 4, 3), np.uint8),
         "images: a numpy array of shape 2×4×4×3 (a stack of pictures: pass list(array))"),
        ([PHOTO, [PHOTO]], "images[1]: got list"),
    ):
        with pytest.raises(ExpclipError) as refused:
            fer.predict(given)
        assert str(refused.value) == f"{message}; {wanted}"
    with pytest.raises(ExpclipError, match=r"^on_error='skip': choose 'raise' or 'record'$"):
        fer.predict([PHOTO], on_error="skip")


def test_predict_raises_on_an_unreadable_file_or_records_it_and_keeps_the_others(fer, tmp_path):
    data = PHOTO.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # a real JPEG, truncated
    missing = tmp_path / "gone.png"
    with pytest.raises(ExpclipError, match=r"cut\.jpg: cannot be read as an image \(truncated or corrupt image"):
        fer.predict([PHOTO, tmp_path / "cut.jpg"])
    shutil.copy(PHOTO, tmp_path / "good.jpg")
    found = fer.predict([tmp_path / "cut.jpg", tmp_path / "good.jpg", missing], on_error="record")
    assert found[0]["image"] == 0 and found[0]["error"].startswith(
        f"{tmp_path / 'cut.jpg'}: cannot be read as an image"
    )
    assert found[1] == {**fer.predict([PHOTO])[0], "image": 1}  # the good picture scored as alone
    assert found[2] == {"image": 2, "error": f"{missing}: cannot be read as an image (missing file)"}


def test_a_frame_folder_with_a_broken_frame_is_one_failed_clip_and_the_others_are_kept(fer, tmp_path):
    from expclip.stages.predict.media import listing
    from expclip.stages.predict.records import predict_inputs

    for name in ("good", "broken"):
        (tmp_path / name).mkdir()
        for i in range(3):
            shutil.copy(PHOTO, tmp_path / name / f"{i}.jpg")
    (tmp_path / "broken" / "1.jpg").write_bytes(PHOTO.read_bytes()[:2000])
    records, inputs = predict_inputs(fer, listing([tmp_path / "broken", tmp_path / "good"], frame_folders=True))
    [failed] = [r for r in records if r["kind"] == "failed"]
    assert inputs == 2 and failed["file"] == str(tmp_path / "broken")
    assert failed["reason"].startswith("frame 1.jpg cannot be read as an image (truncated or corrupt image")
    assert records[1:] == predict_inputs(fer, listing([tmp_path / "good"], frame_folders=True))[0]
    assert [r["frame"] for r in records if r["kind"] == "face"] == [0, 1, 2]
