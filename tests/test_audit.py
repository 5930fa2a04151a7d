"""audit against brute-force numpy on small caches (faiss range search too); leak-free fit-head."""

import csv
import importlib
import io
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from neighbour_caches import D, planted, stored, unit, write_cache
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.audit import audit
from expclip.stages.shared.vocabulary import NEAR_DUPLICATE

audit_module = importlib.import_module("expclip.stages.audit.pairs")
runner = CliRunner()


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
