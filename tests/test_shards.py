"""WebDataset tar shards as an extract SOURCE: listing against webdataset, labels, failures, resume, --part."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache.format import partial_dir
from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.synthetic import draw_face, expression_of
from expclip.stages.encoders.images import load_image
from expclip.stages.extract import sources

runner = CliRunner()
CLASSES = ["happy", "sad", "angry"]


def _png(expression: str, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    draw_face(expression_of(expression), 36, rng).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            _add(tar, name, data)
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three shards as img2dataset writes them: 000.tar with .cls labels and a corrupt member, 001.tar with
    .json labels and a key without a picture, 002.tar with pictures only; returns the folder."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    first = []
    for i in range(5):
        first += [(f"0000{i}.png", _png(CLASSES[i % 3], rng)), (f"0000{i}.cls", str(i % 3).encode())]
    first[4] = ("00002.png", b"\x89PNG\r\n\x1a\n not a picture")  # a corrupt member, still labelled
    write_shard(folder / "faces-000.tar", first)
    second = []
    for i in range(4):
        meta = {"label": CLASSES[i % 3], "url": f"http://x/{i}"} if i != 3 else {"url": "no label"}
        second += [(f"1000{i}.jpg", _jpeg(CLASSES[i % 3], rng)), (f"1000{i}.json", json.dumps(meta).encode()),
                   (f"1000{i}.txt", b"a caption")]
    second.append(("10009.json", b"{}"))  # img2dataset's record of a failed download: no picture
    write_shard(folder / "faces-001.tar", second)
    write_shard(folder / "faces-002.tar", [(f"2000{i}.webp", _webp(rng)) for i in range(3)])
    return folder


def _jpeg(expression: str, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    draw_face(expression_of(expression), 36, rng).save(buffer, format="JPEG")
    return buffer.getvalue()


def _webp(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    draw_face(expression_of("neutral"), 36, rng).save(buffer, format="WEBP")
    return buffer.getvalue()


def _pattern(folder: Path) -> str:
    return str(folder / "faces-{000..002}.tar")


def test_items_are_webdatasets_samples_in_shard_order(shards):
    """The ids, keys and pictures equal what webdataset itself yields for the same pattern."""
    source = sources.resolve(Path(_pattern(shards)))
    samples = [s for s in wds.WebDataset(_pattern(shards), shardshuffle=False)
               if {"png", "jpg", "webp"} & s.keys()]
    expected = [f"{Path(s['__url__']).name}/{s['__key__']}" for s in samples]
    assert source.items.ids == expected and len(expected) == 12
    assert source.ignored == 1 and source.units == [0, 5, 9] and source.dataset == shards.name
    for member, sample in zip(source.members, samples):
        assert member.read() == next(sample[e] for e in ("png", "jpg", "webp") if e in sample)
    assert [m.shard.name for m in source.members] == [i.split("/")[0] for i in expected]


def test_cls_labels_and_json_label_field(shards):
    cls = sources.resolve(Path(str(shards / "faces-000.tar")))
    assert cls.items.class_names == ["0", "1", "2"]
    assert cls.items.labels.tolist() == [0, 1, 2, 0, 1]
    named = sources.resolve(Path(str(shards / "faces-001.tar")), label_field="label")
    assert named.items.class_names == sorted(CLASSES[:3])
    assert [named.items.class_names[i] if i >= 0 else None for i in named.items.labels] == [
        "happy", "sad", "angry", None]
    unlabelled = sources.resolve(Path(str(shards / "faces-001.tar")))  # no .cls members, no field chosen
    assert unlabelled.items.labels.tolist() == [-1] * 4


def test_mixed_and_bad_labels_name_the_member(tmp_path):
    png = _png("happy", np.random.default_rng(1))
    write_shard(tmp_path / "a.tar", [("1.png", png), ("1.cls", b"0"), ("2.png", png), ("2.cls", b"sad")])
    with pytest.raises(ExpclipError, match=r"^.*a\.tar: 2\.cls: labels mix numbers and class names$"):
        sources.resolve(tmp_path / "a.tar")
    write_shard(tmp_path / "b.tar", [("1.png", png), ("1.json", b'{"label": [1]}')])
    with pytest.raises(ExpclipError, match=r"b\.tar: 1\.json: field 'label' is \[1\], not a class number or name$"):
        sources.resolve(tmp_path / "b.tar", label_field="label")
    with pytest.raises(ExpclipError, match="^--label-field: only tar shards"):
        sources.resolve(tmp_path, label_field="label")


def test_a_truncated_tar_is_one_line_naming_the_shard(shards, tmp_path):
    whole = (shards / "faces-001.tar").read_bytes()
    for cut in (len(whole) // 2, 1024 + 100):  # inside a member's data; inside the second header
        (tmp_path / "cut.tar").write_bytes(whole[:cut])
        with pytest.raises(ExpclipError) as caught:
            sources.resolve(tmp_path / "cut.tar")
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / 'cut.tar'}: truncated or damaged tar") and "\n" not in message
    result = runner.invoke(app, ["extract", str(tmp_path / "cut.tar"), "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "truncated or damaged tar" in result.output and "Traceback" not in result.output


def test_a_missing_shard_of_a_pattern_is_named(shards):
    with pytest.raises(ExpclipError, match=r"faces-003\.tar: no such shard \(from .*faces-\{000\.\.003\}\.tar\)$"):
        sources.resolve(Path(str(shards / "faces-{000..003}.tar")))


def test_load_image_reads_bytes_and_file_objects_by_the_same_rules(tmp_path):
    """A member's bytes decode exactly as the same file on disk (one decode rule), failures too."""
    buffer = io.BytesIO()
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(buffer, format="PNG")  # transparent: composited on white
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    from_path = np.asarray(load_image(tmp_path / "a.png"))
    assert np.array_equal(np.asarray(load_image(buffer.getvalue())), from_path)
    assert np.array_equal(np.asarray(load_image(io.BytesIO(buffer.getvalue()))), from_path)
    assert from_path.min() == 255
    from expclip.stages.encoders.images import DecodeError

    for empty in (b"", io.BytesIO()):
        with pytest.raises(DecodeError, match="^zero-byte file$"):
            load_image(empty)
    with pytest.raises(DecodeError, match="^not an image$"):
        load_image(b"plain text")


def _extract(source: str, out: Path, tiny_clip: str, *extra: str):
    return runner.invoke(app, ["extract", source, "--out", str(out), "--clip-model", tiny_clip, "--no-teacher",
                               "--num-workers", "0", "--batch-size", "2", "--shard-size", "3", *extra])


@pytest.fixture(scope="module")
def shard_cache(shards, tiny_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "shards.h5"
    result = _extract(_pattern(shards), out, tiny_clip)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "12 items: 11 encoded, 1 failed" in result.output
    assert "faces-000.tar/00002: not an image" in result.output
    return out


def test_extract_from_shards_equals_open_clip_on_the_members(shard_cache, shards, tiny_clip):
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    source = sources.resolve(Path(_pattern(shards)))
    with CacheReader(shard_cache) as r:
        items = r.items()
        assert items.ids == source.items.ids and items.ok.tolist() == [i != 2 for i in range(12)]
        assert r.failures() == {"faces-000.tar/00002": "not an image"}
        assert r.attrs["source_root"] == str(shards.resolve())
        stored = r.image(r.image_keys()[0])
    pictures = [load_image(m.read()) for m, good in zip(source.members, items.ok) if good]
    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(p) for p in pictures])).numpy()
    np.testing.assert_allclose(stored[items.ok].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert np.isnan(stored[2]).all()


def test_parts_split_by_shard_then_merge_to_the_same_cache(shard_cache, shards, tiny_clip, tmp_path):
    """Work units never cross a tar: shards of 3 rows are cut at 0, 3 | 5, 8 | 9; part 1/2 takes tars 0 and 2."""
    out = tmp_path / "parts.h5"
    first = _extract(_pattern(shards), out, tiny_clip, "--part", "1/2")
    assert first.exit_code == 0 and ": 7 items encoded" in first.output, first.output  # 5 + 3, one failed
    written = sorted(p.name for p in partial_dir(out).glob("image/**/0*.h5"))
    assert written == ["000000000-000000003.h5", "000000003-000000005.h5", "000000009-000000012.h5"]
    second = _extract(_pattern(shards), out, tiny_clip, "--part", "2/2")
    assert second.exit_code == 0 and ": 4 items encoded" in second.output, second.output
    merged = _extract(_pattern(shards), out, tiny_clip)
    assert merged.exit_code == 0 and "merged the shards of an earlier run" in merged.output, merged.output
    with CacheReader(out) as a, CacheReader(shard_cache) as b:
        key = a.image_keys()[0]
        np.testing.assert_array_equal(a.image(key), b.image(key))
        assert a.items().ids == b.items().ids and a.failures() == b.failures()


def test_an_interrupted_run_resumes_only_the_missing_shards(shard_cache, shards, tiny_clip, tmp_path, monkeypatch):
    """The shards of an earlier run stand: a re-run decodes only the members of the missing ones."""
    out = tmp_path / "resumed.h5"
    assert _extract(_pattern(shards), out, tiny_clip, "--part", "2/2").exit_code == 0  # as if stopped midway
    from expclip.stages.extract import shards as shard_module

    read: list[str] = []
    original = shard_module.Member.read
    monkeypatch.setattr(shard_module.Member, "read", lambda m: read.append(m.shard.name) or original(m))
    resumed = _extract(_pattern(shards), out, tiny_clip)
    assert resumed.exit_code == 0 and "12 items: 7 encoded, 4 encoded earlier, 1 failed" in resumed.output
    assert sorted(set(read)) == ["faces-000.tar", "faces-002.tar"] and len(read) == 8
    with CacheReader(out) as a, CacheReader(shard_cache) as b:
        key = a.image_keys()[0]
        np.testing.assert_array_equal(a.image(key), b.image(key))


def test_export_of_a_shard_cache_names_each_member(shard_cache, shards, tmp_path):
    """The export's image_path is the source root joined with the item id: the shard file and the member's key."""
    from embedding_reader import EmbeddingReader

    out = tmp_path / "export"
    assert runner.invoke(app, ["cache", "export", str(shard_cache), "--out", str(out)]).exit_code == 0
    reader = EmbeddingReader(str(out / "img_emb"), file_format="parquet_npy", metadata_folder=str(out / "metadata"),
                             meta_columns=["id", "label", "image_path"])
    (embeddings, meta), = list(reader(batch_size=100, show_progress=False))
    with CacheReader(shard_cache) as r:
        ok, stored = r.items().ok, r.image(r.image_keys()[0]).astype(np.float64)
    np.testing.assert_allclose(embeddings, (stored / np.linalg.norm(stored, axis=1, keepdims=True))[ok], atol=1e-3)
    assert meta["image_path"].tolist()[:2] == [f"{shards.resolve()}/faces-000.tar/00000",
                                               f"{shards.resolve()}/faces-000.tar/00001"]
    assert meta["label"].tolist()[:4] == ["0", "1", "0", "1"]  # .cls numbers; item 00002 failed


def test_ranks_and_parts_take_whole_tar_shards(shards, tmp_path):
    """Every process of a launched job (or --part) gets all of a tar's shard files, none of another's."""
    from expclip.cache.writer import Extraction
    from expclip.stages.extract.plan import Plan

    source = sources.resolve(Path(_pattern(shards)))  # tars of 5, 4 and 3 items, units [0, 5, 9]
    job = Extraction(tmp_path / "c.h5", source.items, {}, shard_size=2, units=source.units)
    todo = job.register("image/k", {"model": "k"})
    assert todo == [(0, 2), (2, 4), (4, 5), (5, 7), (7, 9), (9, 11), (11, 12)]
    plan = Plan(job, "image/k", None, {"image/k": todo}, [])
    ranks = [plan.share(None, rank, 2, leader=rank == 0).shards["image/k"] for rank in (0, 1)]
    assert ranks == [[(0, 2), (2, 4), (4, 5), (9, 11), (11, 12)], [(5, 7), (7, 9)]]
    part = plan.share((2, 3), 0, 1, leader=True).shards["image/k"]
    assert part == [(5, 7), (7, 9)]
