"""Class names are matched to the canonical Exp-CLIP classes by name, never by position."""

import json

import numpy as np
import pytest
from conftest import SEVEN

from expclip.base.errors import ExpclipError
from expclip.stages.shared.labels import canonical_names, dataset_labels, read_label_map

RAFDB = {"1": "Surprise", "2": "Fear", "3": "Disgust", "4": "Happiness", "5": "Sadness", "6": "Anger", "7": "Neutral"}
AFFECTNET = {
    "0": "Neutral",
    "1": "Happy",
    "2": "Sad",
    "3": "Surprise",
    "4": "Fear",
    "5": "Disgust",
    "6": "Anger",
    "7": "Contempt",
}


def test_alphabetical_folders_are_reordered_by_name():
    names = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # image-folder order
    labels = np.array([0, 3, 5, -1, 6, 4])
    got = dataset_labels(names, labels)
    assert got.classes == SEVEN
    assert [got.classes[i] if i >= 0 else None for i in got.y] == [
        "Anger",
        "Happiness",
        "Sadness",
        None,
        "Surprise",
        "Neutral",
    ]


def test_synonyms_and_case_are_accepted():
    assert canonical_names(
        ["HAPPY", "Sadness", "angry", "Surprised", "disgusted", "scared", "calm", "contemptuous"]
    ) == [
        "Happiness",
        "Sadness",
        "Anger",
        "Surprise",
        "Disgust",
        "Fear",
        "Neutral",
        "Contempt",
    ]


def test_a_dataset_is_scored_on_its_own_classes_only():
    got = dataset_labels(["sad", "contempt", "happy"], np.array([0, 1, 2]))
    assert got.classes == ["Happiness", "Sadness", "Contempt"]
    assert got.y.tolist() == [1, 2, 0]


def test_unknown_names_are_listed_with_the_valid_ones():
    with pytest.raises(ExpclipError) as e:
        canonical_names(["happy", "smiling", "grumpy"], where="eval.h5")
    msg = str(e.value)
    assert "eval.h5" in msg and "'smiling'" in msg and "'grumpy'" in msg and "'happy'" not in msg
    assert "Happiness, Sadness" in msg and "--label-map" in msg


def test_numeric_names_need_a_label_map():
    with pytest.raises(ExpclipError, match=r"need --label-map \(built-in: affectnet, rafdb; or a FILE\)$"):
        canonical_names(list(RAFDB))


def test_two_names_for_one_class_are_refused():
    with pytest.raises(ExpclipError, match="'happy' and 'joy' both mean Happiness"):
        canonical_names(["happy", "joy"])


def test_labels_outside_the_class_names_are_refused():
    with pytest.raises(ExpclipError, match="outside 0..1"):
        dataset_labels(["happy", "sad"], np.array([0, 2]))


def test_rafdb_json_label_map(tmp_path):
    path = tmp_path / "rafdb.json"
    path.write_text(json.dumps(RAFDB, indent=1))
    mapping = read_label_map(path)
    assert mapping == RAFDB
    got = dataset_labels(list(RAFDB), np.arange(7), mapping)  # class_names "1".."7", label i -> str(i + 1)
    assert [got.classes[i] for i in got.y] == list(RAFDB.values())


def test_affectnet_csv_label_map_with_header_and_synonyms(tmp_path):
    path = tmp_path / "affectnet.csv"
    path.write_text("label,name\n" + "".join(f"{k},{v}\n" for k, v in AFFECTNET.items()))
    mapping = read_label_map(path)
    assert mapping["1"] == "Happiness" and mapping["2"] == "Sadness" and mapping["7"] == "Contempt"
    got = dataset_labels(list(AFFECTNET), np.arange(8), mapping)
    assert got.classes == [*SEVEN, "Contempt"]


def test_txt_label_map_whitespace_and_comments(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("# RAF-DB\n1 Surprise\n\n2\tFear\n")
    assert read_label_map(path) == {"1": "Surprise", "2": "Fear"}


@pytest.mark.parametrize(
    "name, text, line, fragment",
    [
        ("bad.json", '{\n "1": "Surprise",\n "2": \n}', 4, "not valid JSON"),
        ("bad.json", '{\n "1": "Surprise",\n "2": "Smile"\n}', 3, "the value is not a class; valid: Happiness"),
        ("bad.json", '{\n "1": "Surprise",\n "2": 3\n}', 3, "the value is not a class name (a string)"),
        ("bad.json", '["Surprise"]', 1, "JSON object"),
        ("bad.json", '{\n "1": "Surprise",\n "1": "Fear"\n}', 3, "a label appears twice (the key)"),
        (
            "bad.csv",
            "1,Surprise\n2,Fear,extra\n",
            2,
            "expected two columns `label,name`, both non-empty (found 3 fields)",
        ),
        ("bad.csv", "1,Surprise\n\n3,Grumpy\n", 3, "field 2 (name) is not a class; valid: Happiness"),
        ("bad.txt", "1 Surprise\n1 Fear\n", 2, "field 1 (label) repeats the label of line 1"),
        ("bad.txt", "1 Surprise\nlonely\n", 2, "(found 1 field)"),
    ],
)
def test_malformed_label_maps_name_file_and_line(tmp_path, name, text, line, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ExpclipError) as e:
        read_label_map(path)
    assert f"{path}:{line}:" in str(e.value) and fragment in str(e.value)


def test_empty_label_map(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("# nothing\n")
    with pytest.raises(ExpclipError, match="empty label map"):
        read_label_map(path)


def test_builtin_label_maps_follow_the_datasets_published_layouts():
    # RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
    rafdb = read_label_map("rafdb")
    assert [rafdb[str(i)] for i in range(1, 8)] == [
        "Surprise",
        "Fear",
        "Disgust",
        "Happiness",
        "Sadness",
        "Anger",
        "Neutral",
    ]
    # AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt.
    affectnet = read_label_map("AffectNet")
    assert [affectnet[str(i)] for i in range(8)] == [
        "Neutral",
        "Happiness",
        "Sadness",
        "Surprise",
        "Fear",
        "Disgust",
        "Anger",
        "Contempt",
    ]
    labels = dataset_labels([str(i) for i in range(8)], np.array([4, 1, -1, 7]), rafdb)
    assert labels.classes == ["Happiness", "Sadness", "Neutral", "Anger", "Surprise", "Disgust", "Fear"]
    assert labels.y.tolist() == [0, 4, -1, 2]  # 4 = Happiness, 1 = Surprise, 7 = Neutral


def test_unknown_label_map_name_lists_the_builtins(tmp_path):
    with pytest.raises(ExpclipError, match=r"no such file, and not a built-in map \(affectnet, rafdb\)"):
        read_label_map(tmp_path / "nope.csv")
