"""Listing sources: folders, list files, official clip lists, and their errors (file:line)."""

from pathlib import Path

import pytest
from conftest import ELEVEN, SEVEN
from PIL import Image

from expclip.base.errors import ExpclipError
from expclip.stages.extract.sources import resolve

SAMPLES = (
    Path(__file__).resolve().parent / "data" / "annotation_samples"
)  # copies of ../shared/reference/annotation_samples (tests/test_reference.py)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 30)).save(path)
    return path


def test_folder_classes_are_first_level_subfolders(tmp_path):
    for rel in ["sad/a.png", "happy/b.png", "happy/deep/c.jpg", "loose.png", "happy/notes.txt", ".hidden/x.png"]:
        _png(tmp_path / rel) if rel.endswith(("png", "jpg")) else (tmp_path / rel).write_text("x")
    src = resolve(tmp_path)
    assert src.items.class_names == ["happy", "sad"]
    assert src.items.ids == ["happy/b.png", "happy/deep/c.jpg", "loose.png", "sad/a.png"]
    assert src.items.labels.tolist() == [0, 0, -1, 1]
    assert src.ignored == 1 and src.dataset == tmp_path.name and src.items.kind == "images"


def test_flat_folder_is_unlabelled(tmp_path):
    _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    src = resolve(tmp_path, dataset="CAER-S")
    assert src.items.class_names == [] and src.items.labels.tolist() == [-1, -1] and src.dataset == "CAER-S"


def test_list_file_with_names_numbers_and_root(tmp_path):
    lst = tmp_path / "train.csv"
    lst.write_text("path,label\nimgs/a.png,happy\n# comment\n\nimgs/b.png,sad\nimgs/c.png\n")
    src = resolve(lst)
    assert src.items.ids == ["imgs/a.png", "imgs/b.png", "imgs/c.png"]
    assert src.items.class_names == ["happy", "sad"] and src.items.labels.tolist() == [0, 1, -1]
    assert src.paths[0] == tmp_path / "imgs/a.png"
    numeric = tmp_path / "raf.txt"
    numeric.write_text("x/1.jpg,4\nx/2.jpg,1\n")
    other = tmp_path / "elsewhere"
    src = resolve(numeric, root=other)
    assert src.items.class_names == ["0", "1", "2", "3", "4"] and src.items.labels.tolist() == [4, 1]
    assert src.paths[1] == other / "x/2.jpg"


@pytest.mark.parametrize(
    "text, message",
    [("a.png,1\nb.png,2,3\n", ":2: expected 'path[,label]'"),
     ("a.png,1\nb.png,happy\n", ":2: labels mix numbers and class names"),
     ("a.png,-3\n", ":1: label -3 is negative")],
)
def test_malformed_list_lines_name_file_and_line(tmp_path, text, message):
    lst = tmp_path / "bad.csv"
    lst.write_text(text)
    with pytest.raises(
        ExpclipError, match=str(lst).replace(".", r"\.") + message.replace("[", r"\[").replace("]", r"\]")
    ):
        resolve(lst)


def test_reference_annotation_samples_parse_and_rebase(tmp_path):
    # The protocol's annotation samples: `frame_dir num_frames label`, 0-based, absolute paths from another machine
    path = SAMPLES / "DFEW_set_1_test.txt"
    first = path.read_text().split("\n")[0].split()
    prefix = "/data/EECS-IoannisLab/datasets/DFEW"
    src = resolve(path, strip_prefix=prefix, root=tmp_path, dataset="DFEW")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert len(src.items) == len(lines)
    assert src.paths[0] == tmp_path / first[0][len(prefix) + 1:]
    assert src.items.ids[0] == "DFEW_Frame_Face/00001"
    assert src.items.labels.tolist() == [int(row[2]) for row in lines]
    assert src.items.class_names == SEVEN
    assert src.items.num_frames.tolist() == [int(row[1]) for row in lines]
    assert first[1] == "144" and src.items.frame_index[0].tolist() == [int(4.5 + 9 * i) for i in range(16)]
    assert src.items.frame_index.shape == (len(lines), 16)
    mafw = resolve(SAMPLES / "MAFW_set_1_test.txt", strip_prefix="/data", root=tmp_path, dataset="MAFW")
    assert mafw.items.class_names == ELEVEN  # MAFW has all 11 classes


@pytest.mark.parametrize(
    "line, message",
    [("/x/a 12", "expected 'frame_dir num_frames label'"),
     ("/x/a twelve 1", "must be a positive integer"),
     ("/x/a 12 11", "must be 0..10"),
     ("/y/a 12 1", "does not start with --strip-prefix")],
)
def test_malformed_clip_lines_name_file_and_line(tmp_path, line, message):
    lst = tmp_path / "clips.txt"
    lst.write_text(f"/x/ok 30 0\n{line}\n")
    with pytest.raises(ExpclipError, match=f"clips.txt:2: .*{message}"):
        resolve(lst, kind="clips", strip_prefix="/x", root=tmp_path)


def test_missing_source_and_bad_type(tmp_path):
    with pytest.raises(ExpclipError, match="no such file or folder"):
        resolve(tmp_path / "nope")
    with pytest.raises(ExpclipError, match="choose one of auto, folder, list, clips"):
        resolve(tmp_path, kind="zip")


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("header", [b"", b"path,label\n", b"PATH , Label\n", b" Path,LABEL \n", b'"path","label"\n'])
@pytest.mark.parametrize("bom", [b"", BOM], ids=["no-bom", "bom"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_list_file_bom_header_and_line_ends(tmp_path, header, bom, newline):
    """Spreadsheet exports: a UTF-8 BOM, a header in any case/spacing and CRLF change nothing."""
    lst = tmp_path / "train.csv"
    body = b"imgs/a.png,happy\nimgs/b.png,sad\n# note\nimgs/\xc3\xa9.png,happy\n"
    lst.write_bytes((bom + header + body).replace(b"\n", newline))
    src = resolve(lst)
    assert src.items.ids == ["imgs/a.png", "imgs/b.png", "imgs/é.png"]
    assert src.items.class_names == ["happy", "sad"] and src.items.labels.tolist() == [0, 1, 0]
    assert src.paths[0] == tmp_path / "imgs/a.png"


def test_list_file_with_bom_keeps_its_first_image_and_numeric_labels(tmp_path):
    lst = tmp_path / "raf.txt"
    lst.write_bytes(BOM + b"x/1.jpg,4\r\nx/2.jpg,1\r\n")
    src = resolve(lst)
    assert src.items.ids == ["x/1.jpg", "x/2.jpg"] and src.items.labels.tolist() == [4, 1]
    assert src.items.class_names == ["0", "1", "2", "3", "4"]


def test_clip_list_with_bom_and_crlf(tmp_path):
    lst = tmp_path / "clips.txt"
    lst.write_bytes(BOM + b"/x/c1 30 0\r\n/x/c2 12 3\r\n")
    src = resolve(lst, strip_prefix="/x", root=tmp_path)  # auto: the BOM does not hide that it is a clip list
    assert src.items.kind == "clips" and src.items.ids == ["c1", "c2"] and src.items.labels.tolist() == [0, 3]
    assert src.paths[0] == tmp_path / "c1"


@pytest.mark.parametrize("kind, line, message", [
    ("list", "hunter2,a,b", "expected 'path[,label]', found 3 fields"),
    ("list", ",hunter2", "expected 'path[,label]', found 2 fields and an empty path"),
    ("clips", "hunter2 secret", "expected 'frame_dir num_frames label', found 2 fields"),
    ("clips", "/x/a hunter2 1", "field 2 (num_frames) must be a positive integer"),
    ("clips", "/x/a 12 hunter2", "field 3 (label) must be 0..10 (0-based protocol order)"),
    ("clips", "/hunter2/a 12 1", "field 1 (frame_dir) does not start with --strip-prefix '/x'"),
])
def test_a_bad_source_line_is_named_never_echoed(tmp_path, kind, line, message):
    """A source that is not what it should be (say --source-type list on a private file) is described by file,
    line and field; its content never appears in the message."""
    src = tmp_path / "private.txt"
    src.write_text(f"{'/x/ok 30 0' if kind == 'clips' else 'ok.png'}\n{line}\n")
    extra = {"strip_prefix": "/x", "root": tmp_path} if kind == "clips" else {}
    with pytest.raises(ExpclipError) as refused:
        resolve(src, kind=kind, **extra)
    assert str(refused.value) == f"{src}:2: {message}" and "hunter2" not in str(refused.value)
