"""base.reading: a user's file that cannot be read, or is not JSON, is one error naming the file and line."""

import json

import pytest

from expclip.base.errors import ExpclipError
from expclip.base.reading import parse_json, read_json, read_text


def test_text_json_and_their_errors_name_the_file_and_line(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}', "utf-8")
    assert read_json(good, "preset") == {"a": [1, 2]}
    bom = tmp_path / "list.txt"
    bom.write_bytes(b"\xef\xbb\xbfx.png,happy\n")
    assert read_text(bom, "list file", encoding="utf-8-sig") == "x.png,happy\n"
    with pytest.raises(ExpclipError, match=rf"^{tmp_path / 'missing.json'}: cannot read prompt file \(\[Errno 2\] "):
        read_json(tmp_path / "missing.json", "prompt file")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("1,Überraschung\n".encode("latin-1"))
    with pytest.raises(ExpclipError, match=rf"^{latin}: cannot read label map \('utf-8' codec can't decode"):
        read_text(latin, "label map")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "a": 1,\n "b": \n}', "utf-8")
    with pytest.raises(ExpclipError, match=rf"^{broken}:4: not valid JSON \(Expecting value\)$"):
        read_json(broken, "preset")


def test_parse_json_passes_its_options_to_json_loads(tmp_path):
    assert parse_json(tmp_path / "x.json", '{"a": 1, "a": 2}', object_pairs_hook=list) == [("a", 1), ("a", 2)]
    assert parse_json(tmp_path / "x.json", "[1.5]") == json.loads("[1.5]")
