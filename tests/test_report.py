"""Reports follow their documented formats: Table-2 layout, JSON records, CSV columns, PNG files."""

import csv
import json
from pathlib import Path

import pytest
from matplotlib import colormaps
from PIL import Image
from rich.console import Console

import expclip
from expclip.base.errors import ExpclipError
from expclip.reports import confusion, files
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
    files.write_json(records, path)
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
        files.write_json(records, path)
    assert str(refused.value) == f"{path}: the results hold NaN or infinity, which JSON cannot hold; nothing written"
    assert list(tmp_path.iterdir()) == []


def test_csv_columns(records, tmp_path):
    path = tmp_path / "r.csv"
    files.write_csv(report.csv_table(
        records + [record("MAFW", "clip", 13.39, 15.48, classes=("Happiness", "Contempt", "Sadness"))]), path
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


def test_count_panels_one_per_record(records, tmp_path):
    written = confusion.write_count_panels(records[:2], tmp_path / "png")
    assert [p.name for p in written] == ["RAFDB__clip__ensemble_ten.png", "RAFDB__exp-clip__ensemble_ten.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [p.name for p in written]


def test_count_panels_of_two_caches_with_one_dataset_name_do_not_overwrite(records, tmp_path):
    first = dict(records[0], cache="/data/a/test.h5")
    second = dict(records[0], cache="/data/b/other.h5")
    written = confusion.write_count_panels([first, second], tmp_path)
    assert [p.name for p in written] == ["RAFDB-test__clip__ensemble_ten.png", "RAFDB-other__clip__ensemble_ten.png"]


def test_dataset_sheets_one_file_per_dataset_and_two_caches_of_one_name_do_not_overwrite(records, tmp_path):
    written = confusion.write_dataset_sheets(records, tmp_path / "png")
    assert [p.name for p in written] == ["RAFDB.png", "DFEW.png"]
    same = confusion.write_dataset_sheets([dict(records[0], cache="/a/test.h5"), dict(records[0], cache="/b/x.h5")],
                                          tmp_path / "two")
    assert [p.name for p in same] == ["RAFDB-test.png", "RAFDB-x.png"]


def test_dataset_sheet_shows_row_shares_with_counts_clip_beside_exp_clip(records, tmp_path):
    """The cells say what an independent row normalisation says; the picture shows their colours and a grey
    row for a class without ground truth."""
    counts = [[3, 1, 0], [0, 2, 2], [0, 0, 0]]
    records[1]["confusion"] = counts
    rafdb = [r for r in records if r["dataset"] == "RAFDB"]
    fig = confusion.dataset_figure(rafdb, "RAFDB")
    path = files.write_png(fig, tmp_path / "RAFDB.png")
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    titles = [ax.get_title().split("\n")[0] for ax in axes]
    assert titles == ["CLIP — ensemble_ten", "Exp-CLIP — ensemble_ten", "CLIP — class_name: not evaluated",
                      "Exp-CLIP — class_name"]
    exp = axes[1]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in exp.texts}
    expected = {(i, j): f"{round(100 * c / sum(row))}%\n({c})"
                for i, row in enumerate(counts) if sum(row) for j, c in enumerate(row)}
    assert cells == expected
    with Image.open(path) as image:
        assert image.size == (round(fig.get_figwidth() * 100), round(fig.get_figheight() * 100))
        assert path.stat().st_size < 150_000
        pixels = image.convert("RGB")

        def near(i, j, rgb) -> bool:  # the pixel near a cell's corner, clear of its text, is `rgb` (8-bit rounding)
            x, y = exp.transData.transform((j - 0.4, i - 0.4))
            got = pixels.getpixel((round(x), image.height - round(y)))
            return max(abs(g - round(255 * v)) for g, v in zip(got, rgb)) <= 1

        assert near(2, 0, (0.85, 0.85, 0.85))  # no ground truth: grey, no text
        blues = colormaps["Blues"]
        for (i, j), share in (((0, 0), 0.75), ((1, 2), 0.5), ((0, 2), 0.0)):
            assert near(i, j, blues(share)[:3])


def test_csv_writer_leaves_none_empty_and_ablation_rows_keep_their_key_order(tmp_path):
    rows = [{"lr": 0.001, "dataset": "RAFDB", "uar": 39.5, "note": None}, {"lr": 0.01, "dataset": "DFEW", "uar": 24.0,
                                                                           "note": "x,y"}]
    path = files.write_csv(report.rows_table(rows), tmp_path / "a.csv")
    assert path.read_text("utf-8") == 'lr,dataset,uar,note\n0.001,RAFDB,39.5,\n0.01,DFEW,24.0,"x,y"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


OWN_WRITERS = ("json.dump(", "csv.writer", "csv.DictWriter", "savefig(", "write_atomically(", ".write_text(")


def test_commands_write_reports_only_through_the_output_layer():
    """JSON, CSV and PNG files of every command go through reports/files.py (the demo's fixtures are inputs)."""
    root = Path(expclip.__file__).parent
    found = [f"{p.relative_to(root)}: {w}" for p in sorted(root.rglob("*.py"))
             if "demo" not in p.relative_to(root).parts and p != root / "reports" / "files.py"
             for w in OWN_WRITERS if w in p.read_text("utf-8")]
    assert found == []
