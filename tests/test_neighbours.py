"""search and audit against brute-force numpy on small caches; stored indexes; leak-free fit-head."""

import csv
import hashlib
import importlib
import io
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.audit import audit
from expclip.stages.search import index as index_module
from expclip.stages.search import search
from expclip.stages.shared.heads import Head, build_head
from expclip.stages.shared.vocabulary import NEAR_DUPLICATE

KEY = "ViT-T@nn"
audit_module = importlib.import_module("expclip.stages.audit.pairs")
D = 24
runner = CliRunner()


def write_cache(path: Path, features: np.ndarray, *, labels=None, failed=(), teacher: bool = False) -> Path:
    """Images (n, D) or clips (n, T, D) stored as float16; `failed` rows NaN with items/ok False."""
    n = len(features)
    labels = np.arange(n) % 3 if labels is None else labels
    items = fmt.Items(
        ids=[f"{path.stem}/{i}" for i in range(n)], labels=np.asarray(labels), class_names=["a", "b", "c"]
    )
    if features.ndim == 3:
        items.frame_index = np.tile(np.arange(features.shape[1], dtype=np.int32), (n, 1))
        items.num_frames = np.full(n, features.shape[1], dtype=np.int32)
    rows = features.astype(np.float32).copy()
    rows[list(failed)] = np.nan
    aligned = {fmt.image_path(KEY): (rows, {"model": "ViT-T", "pretrained": "nn", "transform": "model",
                                            "logit_scale": 50.0, "embed_dim": D})}
    if teacher:
        aligned[fmt.teacher_path("t", "paper")] = (np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32),
                                                   {"model": "t", "instruction": "x"})
    write_arrays(path, items, file_attrs={"dataset": path.stem, "source": "synthetic"}, aligned=aligned,
                 failures={i: "bad" for i in failed})
    return path


def stored(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


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


def planted(rng, n_a: int, n_b: int, copies: list[tuple[int, int]], frames: int = 0, noise: float = 0.02):
    """Random caches A and B where A's rows `copies[i][0]` are noisy copies of B's rows `copies[i][1]`."""
    shape = (lambda n: (n, frames, D)) if frames else (lambda n: (n, D))
    a, b = rng.standard_normal(shape(n_a)).astype(np.float32), rng.standard_normal(shape(n_b)).astype(np.float32)
    for i, j in copies:
        a[i] = b[j] + noise * rng.standard_normal(b[j].shape)
    return a, b


def brute_pairs(a: np.ndarray, b: np.ndarray, threshold: float, same: bool) -> set:
    """(a item, a frame, b item, b frame) of every pair >= threshold, by numpy on the stored values."""
    fa, fb = (x.reshape(len(x), -1, D) for x in (stored(a), stored(b)))
    va, vb = unit(fa.reshape(-1, D)), unit(fb.reshape(-1, D))
    s = va @ vb.T
    ta, tb = fa.shape[1], fb.shape[1]
    found = set()
    for p, q in zip(*np.nonzero(s >= threshold)):
        ia, ib = divmod(p, ta), divmod(q, tb)
        if same and (p >= q or ia[0] == ib[0]):
            continue
        found.add((ia[0], ia[1] if a.ndim == 3 else None, ib[0], ib[1] if b.ndim == 3 else None))
    return found


@pytest.mark.parametrize("frames", [0, 3])
def test_audit_equals_brute_force_across_and_within(tmp_path, frames):
    rng = np.random.default_rng(2)
    a, b = planted(rng, 120, 80, [(5, 1), (17, 40), (90, 79)], frames)
    a[60] = a[61] + 0.01  # a near-copy inside A
    ca, cb = write_cache(tmp_path / "a.h5", a), write_cache(tmp_path / "b.h5", b)
    report = audit([ca], [cb], threshold=0.9, block_rows=50)  # several blocks
    got = {(p["a"], p["a_id"], p["a_frame"], p["b"], p["b_id"], p["b_frame"]) for p in report["pairs"]}

    def named(pairs, x, y):
        return {(str(x), f"{x.stem}/{i}", fi, str(y), f"{y.stem}/{j}", fj) for i, fi, j, fj in pairs}
    want = named(brute_pairs(a, b, 0.9, False), ca, cb) | named(brute_pairs(a, a, 0.9, True), ca, ca) \
        | named(brute_pairs(b, b, 0.9, True), cb, cb)
    assert got == want and len(want) >= 4
    assert {(c["a"], c["b"]): c["pairs"] for c in report["counts"]}[(str(ca), str(cb))] == len(
        brute_pairs(a, b, 0.9, False)
    )
    assert [p["score"] for p in report["pairs"]] == sorted((p["score"] for p in report["pairs"]), reverse=True)


def test_exact_products_equal_faiss_range_search(monkeypatch):
    """Audit's exact search (torch products, in blocks smaller than the query set) finds exactly the pairs
    faiss's range_search finds."""
    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal((200, D)).astype(np.float32))
    base[10:15] = unit(base[3] + 0.01 * rng.standard_normal((5, D)).astype(np.float32))  # 6 rows alike
    monkeypatch.setattr(audit_module, "SCORES_PER_BLOCK", 7 * 200)  # blocks of 7 queries
    index = faiss.IndexFlatIP(D)
    index.add(base)
    lims, scores, found = index.range_search(base[:20], float(np.nextafter(np.float32(0.9), np.float32(0))))
    want = sorted((q, int(f), float(s)) for q in range(20) for f, s in zip(found[lims[q]:lims[q + 1]],
                                                                          scores[lims[q]:lims[q + 1]]) if s >= 0.9)
    got = sorted(zip(*[v.tolist() for v in audit_module.Exact(base, torch.device("cpu")).range(base[:20], 0.9)]))
    assert [g[:2] for g in got] == [w[:2] for w in want] and len(want) > 20 + 10  # self-pairs, rows 3/10-14
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], atol=1e-6)


def test_caches_of_different_encoders_are_refused(tmp_path):
    a = write_cache(tmp_path / "a.h5", np.ones((4, D), np.float32))
    items = fmt.Items(ids=["x"], labels=np.zeros(1, np.int64), class_names=["a"])
    write_arrays(
        tmp_path / "b.h5",
        items,
        file_attrs={"dataset": "b", "source": "s"},
        aligned={fmt.image_path("ViT-U@other"): (np.ones((1, D), np.float32), {"model": "ViT-U", "embed_dim": D})},
    )
    with pytest.raises(ExpclipError, match="different ones: .*a.h5 \\(ViT-T@nn\\), .*b.h5 \\(ViT-U@other\\)"):
        audit([a], [tmp_path / "b.h5"])


def test_cli_audit_csv_and_fail_on_leak(tmp_path):
    rng = np.random.default_rng(4)
    a, b = planted(rng, 40, 30, [(3, 7), (20, 21)])
    ca, cb = write_cache(tmp_path / "train.h5", a), write_cache(tmp_path / "test.h5", b)
    result = runner.invoke(app, ["audit", str(ca), "--against", str(cb), "--csv", str(tmp_path / "p.csv"),
                                 "--no-within", "--fail-on-leak"])
    assert result.exit_code == 1, result.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert list(rows[0]) == ["a", "a_id", "a_frame", "b", "b_id", "b_frame", "score"]
    assert {(r["a_id"], r["b_id"]) for r in rows} == {("train/3", "test/7"), ("train/20", "test/21")}
    assert all(float(r["score"]) >= NEAR_DUPLICATE and r["a_frame"] == "" for r in rows)
    assert "2 near-duplicate pair(s) across caches" in result.output
    clean = write_cache(tmp_path / "other.h5", rng.standard_normal((30, D)).astype(np.float32))
    result = runner.invoke(app, ["audit", str(ca), "--against", str(clean), "--fail-on-leak"])
    assert result.exit_code == 0, result.output


def test_fit_head_leaves_out_near_duplicates_of_evaluation_sets_and_says_so(tmp_path):
    rng = np.random.default_rng(5)
    a, b = planted(rng, 64, 20, [(3, 0), (9, 4), (30, 11)])
    train = write_cache(tmp_path / "train.h5", a, teacher=True)
    test = write_cache(tmp_path / "test.h5", b)
    result = runner.invoke(app, ["fit-head", str(train), "--out", str(tmp_path / "h"), "--device", "cpu",
                                 "--batch-size", "8", "--epochs", "1", "--exclude-near-duplicates-of", str(test)])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "h.json").read_text())
    assert card["n_train"] == 61 and card["excluded"]["rows"] == 3 and card["excluded"]["threshold"] == NEAR_DUPLICATE
    assert [c["path"] for c in card["excluded"]["against"]] == [str(test)]
    assert len(card["excluded"]["against"][0]["fingerprint"]) == 64
    assert "leaving out 3 training row(s)" in result.output
    plain = runner.invoke(app, ["fit-head", str(train), "--out", str(tmp_path / "p"), "--device", "cpu",
                                "--batch-size", "8", "--epochs", "1"])
    assert plain.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["excluded"] is None


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


def test_cli_audit_finds_copied_faces_between_real_caches_and_draws_them(tmp_path, tiny_clip):
    """Two folders extracted with the tiny CLIP; the test folder holds two files copied from training."""
    import shutil

    from PIL import Image

    from expclip.demo.synthetic import write_faces

    write_faces(tmp_path / "train", ["happy", "sad"], 4, size=40, seed=1)
    write_faces(tmp_path / "test", ["happy"], 2, size=40, seed=2)
    shutil.copy(tmp_path / "train" / "sad" / "1.png", tmp_path / "test" / "happy" / "copy1.png")
    shutil.copy(tmp_path / "train" / "happy" / "3.png", tmp_path / "test" / "happy" / "copy2.png")
    for name in ("train", "test"):
        made = runner.invoke(app, ["extract", str(tmp_path / name), "--out", str(tmp_path / f"{name}.h5"),
                                   "--clip-model", tiny_clip, "--no-teacher", "--num-workers", "0", "--device", "cpu"])
        assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["audit", str(tmp_path / "train.h5"), "--against", str(tmp_path / "test.h5"),
                                 "--threshold", "0.99999", "--no-within", "--json", str(tmp_path / "a.json"),
                                 "--sheet", str(tmp_path / "pairs.png")])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "a.json").read_text())
    assert {(p["a_id"], p["b_id"]) for p in found["pairs"]} == {("sad/1.png", "happy/copy1.png"),
                                                                 ("happy/3.png", "happy/copy2.png")}
    with Image.open(tmp_path / "pairs.png") as sheet:
        assert sheet.format == "PNG"


def test_altered_copies_of_a_face_are_caught_at_the_default_threshold(tmp_path, tiny_clip):
    """The leak calibration's positive side, through extract and audit: the same file, JPEG quality 60, a 90 %
    centre crop and half the size of a training face are all found at the default threshold. (Its negative
    side, distinct faces staying below it, needs trained weights: random ones put distinct synthetic faces
    at cosines up to ~0.998; benchmarks/leak_threshold.py measures both sides for a real checkpoint.)"""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import leak_threshold
    from PIL import Image

    from expclip.demo.synthetic import write_faces

    write_faces(tmp_path / "train", ["happy"], 4, size=96, seed=3)
    (tmp_path / "test" / "x").mkdir(parents=True)
    face = Image.open(tmp_path / "train" / "happy" / "2.png").convert("RGB")
    for name, variant in leak_threshold.VARIANTS.items():
        variant(face).save(tmp_path / "test" / "x" / f"{name.replace(' ', '_').replace('%', '')}.png")
    for name in ("train", "test"):
        made = runner.invoke(app, ["extract", str(tmp_path / name), "--out", str(tmp_path / f"{name}.h5"),
                                   "--clip-model", tiny_clip, "--no-teacher", "--num-workers", "0", "--device", "cpu"])
        assert made.exit_code == 0, made.output
    report = audit([tmp_path / "train.h5"], [tmp_path / "test.h5"], within=False)
    caught = {p["b_id"] for p in report["pairs"] if p["a_id"] == "happy/2.png"}
    assert caught == {f"x/{n.replace(' ', '_').replace('%', '')}.png" for n in leak_threshold.VARIANTS}


def test_leak_threshold_statistics_equal_numpy():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import leak_threshold
    from PIL import Image

    rng = np.random.default_rng(6)
    faces = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(5)]

    def encode(images):  # mean colour of each quadrant: a stand-in encoder with no model
        arrays = [np.asarray(im.convert("RGB").resize((40, 40)), dtype=np.float32) for im in images]
        return torch.tensor(np.stack([np.concatenate([a[:20, :20].mean((0, 1)), a[20:, 20:].mean((0, 1))])
                                      for a in arrays]))
    found = leak_threshold.calibrate(faces, encode)
    base = unit(encode(faces).numpy())
    sims = base @ base.T
    np.fill_diagonal(sims, -1)
    np.testing.assert_allclose(found["nearest_distinct"], sims.max(1), atol=1e-6)
    crop = unit(encode([leak_threshold.centre_crop(f) for f in faces]).numpy())
    np.testing.assert_allclose(found["copies"]["90% centre crop"], (crop * base).sum(1), atol=1e-6)
    assert found["margin"] == pytest.approx(found["least_copy"] - sims.max(), abs=1e-6)
