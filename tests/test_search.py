"""search against brute-force numpy on small caches; stored indexes, rebuilt when stale, never used damaged."""

import hashlib
import importlib
import json
from pathlib import Path

import faiss
import numpy as np
import torch
from neighbour_caches import KEY, D, stored, unit, write_cache
from typer.testing import CliRunner

from expclip.cli import app
from expclip.stages.search import index as index_module
from expclip.stages.search import search
from expclip.stages.shared.heads import Head, build_head

runner = CliRunner()


def brute_top(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = unit(queries) @ items.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


def test_search_equals_brute_force_for_images_clips_and_a_head(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((300, D)).astype(np.float32)
    cache = write_cache(tmp_path / "img.h5", images, failed=(7,))
    queries = rng.standard_normal((4, D)).astype(np.float32)
    found = search(cache, queries, k=10)
    ok = np.setdiff1d(np.arange(300), [7])
    order, scores = brute_top(unit(stored(images[ok])), queries, 10)
    assert found["index"]["spec"] == "Flat" and found["index_built"]
    for q in range(4):
        assert [h["item"] for h in found["hits"][q]] == ok[order[q]].tolist()
        np.testing.assert_allclose([h["score"] for h in found["hits"][q]], scores[q], atol=1e-5)
        assert found["hits"][q][0]["id"] == f"img/{ok[order[q][0]]}" and found["hits"][q][0]["rank"] == 1

    w = rng.standard_normal((40, D)).astype(np.float32)  # a linear head: scores in W x space
    head = Head(module=build_head("linear", D, 40), kind="linear", meta={"clip_key": KEY})
    head.module.weight.data = torch.from_numpy(w)
    mapped = search(cache, queries, head=head, k=5)
    order, scores = brute_top(unit(stored(images[ok]) @ w.T), queries @ w.T, 5)
    assert [h["item"] for h in mapped["hits"][0]] == ok[order[0]].tolist()
    np.testing.assert_allclose([h["score"] for h in mapped["hits"][0]], scores[0], atol=1e-5)

    clips = rng.standard_normal((50, 4, D)).astype(np.float32)  # a clip = mean of its unit frames
    clip_cache = write_cache(tmp_path / "clips.h5", clips)
    got = search(clip_cache, queries[:1], k=50)
    order, scores = brute_top(unit(unit(stored(clips)).mean(axis=1)), queries[:1], 50)
    assert [h["item"] for h in got["hits"][0]] == order[0].tolist()
    np.testing.assert_allclose([h["score"] for h in got["hits"][0]], scores[0], atol=1e-5)


def test_index_is_stored_reused_and_rebuilt_when_the_cache_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    cache = write_cache(tmp_path / "c.h5", rng.standard_normal((500, D)).astype(np.float32))
    q = rng.standard_normal((3, D)).astype(np.float32)
    monkeypatch.setattr(index_module, "FLAT_MAX_ROWS", 100)  # above it: an approximate index
    first = search(cache, q, k=5)
    assert first["index"]["spec"] == "HNSW32,Flat" and first["index_built"]
    index_file, meta_file = index_module.index_files(cache, KEY, None, "HNSW32,Flat")
    assert index_file.is_file() and json.loads(meta_file.read_text())["rows"] == 500
    again = search(cache, q, k=5)
    assert not again["index_built"] and again["hits"] == first["hits"]
    exact = search(cache, q, k=5, exact=True)  # another kind of index: built, and exact
    assert exact["index"]["spec"] == "Flat" and exact["index_built"]
    recall = np.mean([len({h["item"] for h in a} & {h["item"] for h in b}) / 5
                      for a, b in zip(first["hits"], exact["hits"])])
    assert recall >= 0.8  # HNSW on 500 random vectors: near exact
    assert not search(cache, q, k=5)["index_built"]  # each kind kept in its own file
    cache.unlink()
    write_cache(cache, rng.standard_normal((500, D)).astype(np.float32))  # extracted again: new features
    assert search(cache, q, k=5, exact=True)["index_built"]


def test_a_damaged_index_or_provenance_is_built_again_never_used(tmp_path, capsys):
    """Two flipped bytes of a stored index once gave a top score of 9.7e36 and a truncated one a faiss traceback:
    the JSON records the sha256 of the index file and of its own fields; any mismatch or read error builds the
    index again, saying so in one line, and the hits are those of an intact index."""
    rng = np.random.default_rng(3)
    cache = write_cache(tmp_path / "c.h5", rng.standard_normal((300, D)).astype(np.float32))
    q = rng.standard_normal((2, D)).astype(np.float32)
    clean = search(cache, q, k=5)
    index_file, meta_file = index_module.index_files(cache, KEY, None, "Flat")
    meta = json.loads(meta_file.read_text())
    assert meta["index_sha256"] == hashlib.sha256(index_file.read_bytes()).hexdigest()
    own = meta.pop("meta_sha256")
    assert own == hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    capsys.readouterr()

    def searched_again(reason_of: Path, reason: str) -> None:
        found = search(cache, q, k=5)
        assert found["index_built"] and found["hits"] == clean["hits"]
        assert capsys.readouterr().err.splitlines() == [f"{reason_of}: {reason}; building the index again"]
        assert not search(cache, q, k=5)["index_built"] and capsys.readouterr().err == ""  # intact again: reused

    intact, provenance = index_file.read_bytes(), meta_file.read_text()
    data = bytearray(intact)
    data[-40] ^= 0x7F  # two bytes of one stored vector's float32 exponent
    data[-39] ^= 0x7F
    index_file.write_bytes(bytes(data))
    assert faiss.read_index(str(index_file)).ntotal == 300  # faiss reads it without complaint
    mismatch = f"its bytes do not match the index_sha256 that {meta_file.name} records"
    searched_again(index_file, mismatch)
    index_file.write_bytes(intact[:len(intact) // 2])  # truncated
    searched_again(index_file, mismatch)
    index_file.unlink()
    searched_again(index_file, "cannot be read (No such file or directory)")
    damaged = "unreadable, damaged or without its meta_sha256"
    for text in (provenance.replace('"rows": 300', '"rows": 310'), provenance[:-10], json.dumps(meta)):  # an
        meta_file.write_text(text)  # edited, a truncated and a JSON without its checksum (as written before)
        searched_again(meta_file, damaged)

    index_file.write_bytes(b"not an index at all")  # intact by its record, but not something faiss reads
    forged = {**meta, "index_sha256": hashlib.sha256(b"not an index at all").hexdigest()}
    canonical = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    meta_file.write_text(json.dumps({**forged, "meta_sha256": hashlib.sha256(canonical.encode()).hexdigest()}))
    found = search(cache, q, k=5)
    assert found["index_built"] and found["hits"] == clean["hits"]
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{index_file}: faiss cannot read it (") and line.endswith("); building the index again")


def test_ivf_pq_is_built_when_hnsw_would_not_fit(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((600, D)).astype(np.float32)
    cache = write_cache(tmp_path / "big.h5", vectors)
    monkeypatch.setattr(index_module, "FLAT_MAX_ROWS", 100)
    monkeypatch.setattr(importlib.import_module("expclip.stages.search.nearest"), "available_bytes",
                        lambda: 2 * 600 * D)  # no room for HNSW
    found = search(cache, vectors[:5] + 0.01, k=3)
    assert found["index"]["spec"] == "IVF128,PQ8" and found["index_built"]
    assert [hits[0]["item"] for hits in found["hits"]] == [0, 1, 2, 3, 4]  # each finds its own row first
    assert not search(cache, vectors[:5], k=3)["index_built"]


def test_spec_follows_size_and_memory():
    assert index_module.spec_for(1000, 768, exact=False, budget=10**9) == "Flat"
    assert index_module.spec_for(10**7, 768, exact=True, budget=10**9) == "Flat"
    assert index_module.spec_for(10**6, 768, exact=False, budget=10**10) == "HNSW32,Flat"
    assert index_module.spec_for(10**7, 768, exact=False, budget=10**9) == "IVF16384,PQ64"
    # Boundaries by hand: exact up to 200,000 rows; HNSW32 takes 768 * 4 + 32 * 2 * 4 = 3,328 bytes a row;
    # IVF lists = 2 ** round(log2(4 * sqrt(rows))) (10**6 rows: 4,000 -> 4,096); PQ: largest of 64, 48, ... that
    # divides the width and is at most half of it (12 -> 4).
    assert index_module.spec_for(200_000, 768, exact=False, budget=0) == "Flat"
    assert index_module.spec_for(200_001, 12, exact=False, budget=0) == "IVF2048,PQ4"
    assert index_module.spec_for(10**6, 768, exact=False, budget=3_328_000_000) == "HNSW32,Flat"
    assert index_module.spec_for(10**6, 768, exact=False, budget=3_327_999_999) == "IVF4096,PQ64"


def test_cli_search_encodes_queries_with_the_caches_own_clip(tmp_path, tiny_clip):
    import open_clip

    from expclip.demo.synthetic import write_faces

    faces = tmp_path / "faces"
    write_faces(faces, ["happy", "sad"], 4, size=40)
    cache = tmp_path / "faces.h5"
    made = runner.invoke(app, ["extract", str(faces), "--out", str(cache), "--clip-model", tiny_clip, "--no-teacher",
                               "--num-workers", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    text = "a photo of a face with an expression of disgust"
    result = runner.invoke(app, ["search", str(cache), "--text", text, "--image", str(faces / "sad" / "2.png"),
                                 "-k", "3", "--json", str(tmp_path / "hits.json"), "--device", "cpu",
                                 "--sheet", str(tmp_path / "hits.png")])
    assert result.exit_code == 0, result.output
    from PIL import Image
    for n in (1, 2):  # one sheet per query
        with Image.open(tmp_path / f"hits-{n}.png") as sheet:
            assert sheet.format == "PNG" and sheet.width > 500
    found = json.loads((tmp_path / "hits.json").read_text())
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    with torch.no_grad():
        query = model.encode_text(open_clip.get_tokenizer(tiny_clip)([text])).numpy()
    from expclip.cache.reader import CacheReader
    with CacheReader(cache) as r:
        key = r.image_keys()[0]
        items = r.image(key).astype(np.float32)
        ids = r.items().ids
    order, scores = brute_top(unit(items), query, 3)
    assert [h["id"] for h in found["hits"][0]] == [ids[i] for i in order[0]]
    np.testing.assert_allclose([h["score"] for h in found["hits"][0]], scores[0], atol=1e-4)
    own = found["hits"][1][0]  # an image finds itself first (float16 storage: cosine ~1)
    assert own["id"] == "sad/2.png" and own["score"] > 0.999 and own["label"] == "sad"
    assert "nearest items to text" in result.output and found["queries"][0] == f"text {text!r}"

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = runner.invoke(app, ["search", str(cache), "--image", str(bad), "--device", "cpu"])
    assert result.exit_code == 2 and "--image " + str(bad) + ": cannot be read as an image" in " ".join(
        result.output.split()
    )
    result = runner.invoke(app, ["search", str(cache)])
    assert result.exit_code == 2 and "give a query with --text or --image" in result.output


def test_search_refuses_when_the_caches_clip_weights_changed(tmp_path):
    from expclip.demo.checkpoints import save_tiny_clip
    from expclip.demo.synthetic import write_faces

    clip = save_tiny_clip(tmp_path / "clip", seed=0)
    write_faces(tmp_path / "faces", ["happy"], 2, size=40)
    cache = tmp_path / "c.h5"
    made = runner.invoke(app, ["extract", str(tmp_path / "faces"), "--out", str(cache), "--clip-model", clip,
                               "--no-teacher", "--num-workers", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    save_tiny_clip(tmp_path / "clip", seed=1)  # other weights under the same folder
    result = runner.invoke(app, ["search", str(cache), "--text", "a face", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "are not the ones that wrote the cache" in " ".join(result.output.split())
