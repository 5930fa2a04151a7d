"""Reports follow their documented formats: Table-2 layout, JSON records, CSV columns, PNG files."""

import csv
import json

import pytest
from rich.console import Console

from expclip.base.errors import ExpclipError
from expclip.reports import evaluation as report


def record(dataset, method, uar, war, prompt_set="ensemble_ten", classes=("Happiness", "Sadness", "Anger")):
    per_class = {c: (None if c == "Anger" else 50.0) for c in classes}
    return {
        "dataset": dataset, "method": method, "prompt_set": prompt_set, "uar": uar, "war": war, "n": 4,
        "per_class": per_class, "confusion": [[1, 1, 0], [1, 1, 0], [0, 0, 0]], "classes": list(classes),
        "cache": f"/data/{dataset}.h5", "clip_key": "ViT-B-32@openai", "ensemble": "logits", "skipped": 1,
    }


@pytest.fixture
def records():
    return [
        record("RAFDB", "clip", 34.97, 30.05), record("RAFDB", "exp-clip", 39.56, 42.14),
        record("DFEW", "clip", 22.08, 21.3), record("DFEW", "exp-clip", 24.25, 25.87),
        record("RAFDB", "exp-clip", 40.0, 41.0, prompt_set="class_name"),
    ]


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_table_two_layout(records):
    ten, names = report.tables(records)
    text = render(ten)
    assert "ensemble_ten" in text and text.index("RAFDB") < text.index("DFEW")
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 3}
    assert "34.97 / 30.05" in lines["CLIP"] and "22.08 / 21.30" in lines["CLIP"]
    assert "39.56 / 42.14" in lines["Exp-CLIP"]
    assert "+4.59 / +12.09" in lines["Δ"] and "+2.17 / +4.57" in lines["Δ"]
    only_head = render(names)
    assert "40.00 / 41.00" in only_head and "│ CLIP " not in only_head and "Δ" not in only_head


def test_json_is_the_record_list(records, tmp_path):
    path = tmp_path / "r.json"
    report.write_json(records, path)
    assert json.loads(path.read_text()) == records
    assert set(records[0]) >= {
        "dataset",
        "method",
        "prompt_set",
        "uar",
        "war",
        "n",
        "per_class",
        "confusion",
        "classes",
        "cache",
        "clip_key",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_json_never_holds_nan_and_says_so_in_one_line(records, tmp_path, bad):
    """NaN is not JSON: a result holding one is refused by name, and neither the file nor a temporary is left."""
    records[0]["uar"] = bad
    path = tmp_path / "r.json"
    with pytest.raises(ExpclipError) as refused:
        report.write_json(records, path)
    assert str(refused.value) == f"{path}: the results hold NaN or infinity, which JSON cannot hold; nothing written"
    assert list(tmp_path.iterdir()) == []


def test_csv_columns(records, tmp_path):
    path = tmp_path / "r.csv"
    report.write_csv(
        records + [record("MAFW", "clip", 13.39, 15.48, classes=("Happiness", "Contempt", "Sadness"))], path
    )
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == report.CSV_FIELDS + [
        "recall_Happiness",
        "recall_Sadness",
        "recall_Anger",
        "recall_Contempt",
    ]
    assert report.CSV_FIELDS == [
        "dataset",
        "method",
        "prompt_set",
        "ensemble",
        "uar",
        "war",
        "n",
        "skipped",
        "clip_key",
        "cache",
    ]
    assert len(rows) == 6 and float(rows[1]["war"]) == 42.14 and rows[1]["method"] == "exp-clip"
    assert rows[0]["recall_Happiness"] == "50.0" and rows[0]["recall_Anger"] == "" and rows[0]["recall_Contempt"] == ""
    assert rows[5]["recall_Contempt"] == "50.0" and rows[5]["recall_Anger"] == ""


def test_confusion_pngs(records, tmp_path):
    written = report.write_confusion_pngs(records[:2], tmp_path / "png")
    assert [p.name for p in written] == ["RAFDB__clip__ensemble_ten.png", "RAFDB__exp-clip__ensemble_ten.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [p.name for p in written]


def test_confusion_pngs_of_two_caches_with_one_dataset_name_do_not_overwrite(records, tmp_path):
    first = dict(records[0], cache="/data/a/test.h5")
    second = dict(records[0], cache="/data/b/other.h5")
    written = report.write_confusion_pngs([first, second], tmp_path)
    assert [p.name for p in written] == ["RAFDB-test__clip__ensemble_ten.png", "RAFDB-other__clip__ensemble_ten.png"]
