"""`expclip cache export`: clip-retrieval's layout, read back by embedding-reader against the cache's features."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import KEY, clip_attrs
from embedding_reader import EmbeddingReader
from typer.testing import CliRunner

from expclip.cache import format as fmt
from expclip.cache.reader import CacheReader
from expclip.cache.writer import write_arrays
from expclip.cli import app

runner = CliRunner()
META = ["id", "label", "image_path", "frame"]
TEACHER = fmt.teacher_path("T", "paper")


def _text(rng, names: list[str]) -> tuple[np.ndarray, dict]:
    return (rng.standard_normal((len(names) + 1, 8)).astype(np.float32),
            {"prompts": [f"{n}." for n in names] + [f"a {names[0]}."], "class_names": names,
             "class_index": [*range(len(names)), 0]})


@pytest.fixture()
def cache(tmp_path) -> Path:
    """Ten pictures (one unlabelled, two not decoded), CLIP and teacher features, two prompt sets."""
    rng = np.random.default_rng(0)
    items = fmt.Items(ids=[f"c{i % 3}/{i}.png" for i in range(10)], labels=np.array([0, 1, 2] * 3 + [-1]),
                      class_names=["Anger", "Happiness", "Sadness"])
    image = rng.standard_normal((10, 8)).astype(np.float32) * 3
    teacher = rng.standard_normal((10, 6)).astype(np.float32)
    image[[2, 7]] = teacher[[2, 7]] = np.nan
    path = tmp_path / "c.h5"
    write_arrays(path, items, file_attrs={"dataset": "toy", "source": "src", "source_root": "/data/toy"},
                 aligned={fmt.image_path(KEY): (image, clip_attrs()), TEACHER: (teacher, {"model": "T"})},
                 small={fmt.text_path(KEY, "b_set"): _text(rng, ["Anger", "Sadness"]),
                        fmt.text_path(KEY, "a_set"): _text(rng, ["Happiness"])},
                 failures={2: "not an image", 7: "zero-byte file"})
    return path


def _read(folder: Path, metadata: Path, columns: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Everything an EmbeddingReader yields, as its README shows: parquet_npy with metadata columns."""
    reader = EmbeddingReader(str(folder), file_format="parquet_npy", meta_columns=columns,
                             metadata_folder=str(metadata))
    parts = list(reader(batch_size=4, start=0, end=reader.count, show_progress=False))
    return np.concatenate([e for e, _ in parts]), pd.concat([m for _, m in parts], ignore_index=True)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_export_is_read_back_by_embedding_reader_as_the_caches_features(cache, tmp_path):
    out = tmp_path / "export"
    result = runner.invoke(app, ["cache", "export", str(cache), "--out", str(out), "--teacher"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 8 image rows, 5 prompt rows (left out 2 items without features)" in result.output
    with CacheReader(cache) as r:
        items, image, teacher = r.items(), r.image(KEY), r.teacher("T", "paper")
        texts = {s: r.text(KEY, s) for s in ("a_set", "b_set")}
    ok = items.ok
    embeddings, meta = _read(out / "img_emb", out / "metadata", META)
    assert np.load(out / "img_emb" / "img_emb_0.npy").dtype == np.float16
    np.testing.assert_allclose(embeddings, _unit(image[ok]), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(embeddings.astype(np.float64), axis=1), 1, atol=2e-3)
    assert meta["id"].tolist() == [i for i, good in zip(items.ids, ok) if good]
    assert meta["image_path"].tolist() == [f"/data/toy/{i}" for i in meta["id"]]
    assert meta["label"].tolist() == ["Anger", "Happiness", "Anger", "Happiness", "Sadness", "Anger", "Sadness", None]
    assert meta["frame"].isna().all()
    np.testing.assert_allclose(np.load(out / "teacher_emb" / "teacher_emb_0.npy"), _unit(teacher[ok]), atol=1e-3)
    text, text_meta = _read(out / "text_emb", out / "text_metadata", ["prompt_set", "prompt", "class"])
    np.testing.assert_allclose(text, _unit(np.concatenate([texts["a_set"].features, texts["b_set"].features])),
                               atol=1e-3)
    assert text_meta[["prompt_set", "prompt", "class"]].values.tolist() == [
        ["a_set", "Happiness.", "Happiness"], ["a_set", "a Happiness.", "Happiness"],
        ["b_set", "Anger.", "Anger"], ["b_set", "Sadness.", "Sadness"], ["b_set", "a Anger.", "Anger"]]
    record = json.loads((out / "export.json").read_text())
    assert record["clip_key"] == KEY and record["groups"]["teacher_emb/teacher_emb_0.npy"] == TEACHER
    assert record["rows"] == 8 and record["items_without_features"] == 2 and record["text_rows"] == 5


def test_clips_give_one_row_per_sampled_frame(tmp_path):
    rng = np.random.default_rng(1)
    frames = np.array([[0, 2, 4], [1, 3, 5]], dtype=np.int32)
    items = fmt.Items(ids=["clips/a", "clips/b"], labels=np.array([1, 0]), class_names=["Anger", "Happiness"],
                      frame_index=frames, num_frames=np.array([5, 6], dtype=np.int32))
    image = rng.standard_normal((2, 3, 8)).astype(np.float32)
    cache = tmp_path / "clips.h5"
    write_arrays(cache, items, file_attrs={"source_root": "/v"}, aligned={fmt.image_path(KEY): (image, clip_attrs())})
    out = tmp_path / "export"
    assert runner.invoke(app, ["cache", "export", str(cache), "--out", str(out)]).exit_code == 0
    embeddings, meta = _read(out / "img_emb", out / "metadata", META)
    with CacheReader(cache) as r:
        stored = r.image(KEY)
    np.testing.assert_allclose(embeddings, _unit(stored.reshape(6, 8)), atol=1e-3)
    assert meta["id"].tolist() == ["clips/a"] * 3 + ["clips/b"] * 3
    assert meta["frame"].tolist() == [0, 2, 4, 1, 3, 5] and meta["label"].tolist() == ["Happiness"] * 3 + ["Anger"] * 3


def test_export_refuses_to_replace_its_cache_and_asks_for_a_clip_key(cache, tmp_path):
    inside = tmp_path / "export"
    inside.mkdir()
    (inside / "export.json").hardlink_to(cache)  # the cache under a name the export writes
    result = runner.invoke(app, ["cache", "export", str(inside / "export.json"), "--out", str(inside)])
    assert result.exit_code == 2 and "the same file as the input CACHE" in result.output
    assert (inside / "export.json").read_bytes() == cache.read_bytes()
    with CacheReader(cache) as r:
        items = r.items()
    write_arrays(cache, items, file_attrs={}, aligned={fmt.image_path("Other@x"): (np.ones((10, 8), np.float32),
                                                                                   clip_attrs(model="Other"))})
    result = runner.invoke(app, ["cache", "export", str(cache), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 2 and f"holds several CLIP image keys; choose one with --clip-key: Other@x, {KEY}" \
        in " ".join(result.output.split())
    assert not (tmp_path / "e2" / "export.json").exists()


def test_teacher_group_is_chosen_as_fit_head_chooses_it(cache, tmp_path):
    """--instruction names the group by its key or by its full text, the rule fit-head reads it by."""
    with CacheReader(cache) as r:
        items, ok = r.items(), r.items().ok
    other = np.random.default_rng(2).standard_normal((10, 6)).astype(np.float32)
    write_arrays(cache, items, file_attrs={}, aligned={fmt.teacher_path("T", "sha-1"): (
        other, {"model": "T", "instruction": "Name the expression."})})
    result = runner.invoke(app, ["cache", "export", str(cache), "--out", str(tmp_path / "e"), "--teacher"])
    assert result.exit_code == 2
    assert "holds several instructions; choose one with --instruction: paper, sha-1" in " ".join(result.output.split())
    for given in ("sha-1", "Name the expression."):
        out = tmp_path / given
        result = runner.invoke(app, ["cache", "export", str(cache), "--out", str(out), "--teacher",
                                     "--instruction", given])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "export.json").read_text())["groups"]["teacher_emb/teacher_emb_0.npy"] == \
            fmt.teacher_path("T", "sha-1")
        np.testing.assert_allclose(np.load(out / "teacher_emb" / "teacher_emb_0.npy"), _unit(other[ok]), atol=1e-3)
