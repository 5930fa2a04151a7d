"""Zero-shot evaluation against an independent numpy computation, on small synthetic caches."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KEY, SEVEN, clip_attrs
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.cache import format as fmt
from expclip.cache.writer import write_arrays
from expclip.cli import app
from expclip.stages.evaluate import evaluate
from expclip.stages.shared import protocol
from expclip.stages.shared.heads import Head, build_head, export_official, save_head
from expclip.stages.shared.scoring import GramSpace

CLIP = clip_attrs(logit_scale=100.0)
D, DT = 16, 40
ALPHABETICAL = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.fixture(scope="module")
def reference_sets() -> dict:
    """The five protocol prompt sets as the package ships them (tests/test_reference.py checks them)."""
    return protocol.prompt_sets()


def text_groups(sets: dict, centers: np.ndarray, rng, key: str = KEY) -> dict:
    """`/text/<key>/<set>` groups: each prompt near its canonical class's centre."""
    order = protocol.class_order()
    groups = {}
    for name, per_class in sets.items():
        prompts = [p for c in order if c in per_class for p in per_class[c]]
        index = [order.index(c) for c in order if c in per_class for _ in per_class[c]]
        features = centers[index] + 0.5 * rng.standard_normal((len(index), centers.shape[1]))
        attrs = {"prompts": prompts, "class_names": order, "class_index": index}
        groups[fmt.text_path(key, name)] = (features.astype(np.float32), attrs)
    return groups


def make_cache(path, class_names, labels, image, texts, *, key=KEY, clip=CLIP, failed=()) -> Path:
    """A finished cache; `image` is (N, D) or (N, T, D); rows in `failed` are marked not ok."""
    n = len(labels)
    clips = image.ndim == 3
    items = fmt.Items(
        ids=[f"item{i:03d}" for i in range(n)], labels=np.asarray(labels), class_names=list(class_names),
        frame_index=np.tile(np.arange(image.shape[1], dtype=np.int32), (n, 1)) if clips else None,
        num_frames=np.full(n, image.shape[1], dtype=np.int32) if clips else None,
    )
    image = image.copy()
    image[list(failed)] = np.nan  # as if decoding had failed: rows NaN, recorded as failures (items/ok False)
    write_arrays(path, items, file_attrs={"dataset": Path(path).stem, "source": "synthetic"},
                 aligned={fmt.image_path(key): (image, {**clip, "embed_dim": image.shape[-1]})}, small=texts,
                 failures={i: "not an image" for i in failed})
    return Path(path)


def synthetic(rng, n: int, names: list[str], frames: int = 0, noise: float = 1.2):
    """Labels into `names` and features near the centre of each item's canonical class (frame noise ~ sqrt(T))."""
    centers = 1.5 * rng.standard_normal((11, D))
    labels = rng.integers(0, len(names), n)
    canon = [protocol.class_order().index(protocol.canonical_class(x)) for x in names]
    base = centers[[canon[i] for i in labels]]
    shape = (n, frames, D) if frames else (n, D)
    image = (base[:, None] if frames else base) + noise * np.sqrt(max(frames, 1)) * rng.standard_normal(shape)
    return centers, labels, image.astype(np.float16)


def linear_head(rng, **meta) -> Head:
    module = torch.nn.Linear(D, DT, bias=False)
    module.weight.data.copy_(torch.from_numpy(rng.standard_normal((DT, D))))
    return Head(module=module, kind="linear", meta=meta or {"clip_key": KEY, "clip": dict(CLIP), "d": D, "dt": DT})


def norm(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def expected(image, labels, class_names, text, index, mapper=None, ensemble="logits"):
    """Independent reference: map (per frame), mean, normalise, logits, mean per class, argmax, counts."""
    order = protocol.class_order()
    classes = [c for c in order if c in {protocol.canonical_class(x) for x in class_names}]
    y = np.array([classes.index(protocol.canonical_class(class_names[i])) for i in labels])
    x = image.astype(np.float64)
    if mapper is None:
        x = norm(norm(x).mean(axis=1)) if x.ndim == 3 else norm(x)
        t = norm(text.astype(np.float64))
    else:
        x = norm(mapper(x).mean(axis=1)) if x.ndim == 3 else norm(mapper(x))
        t = norm(mapper(text.astype(np.float64)))
    cls = np.array([classes.index(order[i]) if order[i] in classes else -1 for i in index])
    if ensemble == "logits":
        logits = x @ t.T
        scores = np.stack([logits[:, cls == c].mean(axis=1) for c in range(len(classes))], axis=1)
    else:
        scores = x @ norm(np.stack([t[cls == c].mean(axis=0) for c in range(len(classes))])).T
    pred = scores.argmax(axis=1)
    recalls = [np.mean(pred[y == c] == c) for c in range(len(classes)) if (y == c).any()]
    return 100 * np.mean(pred == y), 100 * np.mean(recalls), pred, y


def by(records, method, prompt_set):
    return next(r for r in records if r["method"] == method and r["prompt_set"] == prompt_set)


@pytest.mark.parametrize("frames", [0, 4])
@pytest.mark.parametrize("ensemble", ["logits", "embedding"])
def test_matches_independent_computation(tmp_path, reference_sets, frames, ensemble):
    rng = np.random.default_rng(frames)
    centers, labels, image = synthetic(rng, 120, ALPHABETICAL, frames)
    texts = text_groups(reference_sets, centers, rng)
    cache = make_cache(tmp_path / "eval.h5", ALPHABETICAL, labels, image, texts)
    head = linear_head(rng)
    w = head.linear_weight().double().numpy()
    records = evaluate(head, [cache], baseline=True, ensemble=ensemble)
    assert [r["prompt_set"] for r in records] == list(reference_sets) * 2  # the five protocol sets, in order
    for name in reference_sets:
        feats, attrs = texts[fmt.text_path(KEY, name)]
        for method, mapper in (("clip", None), ("exp-clip", lambda v: v @ w.T)):
            war, uar, pred, y = expected(image, labels, ALPHABETICAL, feats, attrs["class_index"], mapper, ensemble)
            r = by(records, method, name)
            assert r["war"] == pytest.approx(war) and r["uar"] == pytest.approx(uar)
            assert r["n"] == 120 and r["skipped"] == 0 and r["clip_key"] == KEY and r["ensemble"] == ensemble
            assert r["classes"] == SEVEN
            assert np.array_equal(np.array(r["confusion"]), np.histogram2d(y, pred, bins=[np.arange(8)] * 2)[0])
    assert 20 < by(records, "exp-clip", "ensemble_ten")["war"] < 100  # neither trivial nor hopeless


def test_gram_path_equals_mapping_every_frame():
    rng = np.random.default_rng(1)
    w = torch.from_numpy(rng.standard_normal((DT, D)))
    frames = rng.standard_normal((30, 16, D)).astype(np.float16)
    texts = rng.standard_normal((11, D))
    space = GramSpace(w, torch.device("cpu"))
    images, prompts = space.images(torch.from_numpy(frames)), space.texts(torch.from_numpy(texts))
    wn = w.numpy()
    direct = norm((frames.astype(np.float64) @ wn.T).mean(axis=1)) @ norm(texts @ wn.T).T
    np.testing.assert_allclose((images @ prompts.T).numpy(), direct, rtol=0, atol=1e-12)
    mean_text = space.unit(prompts[:5].mean(dim=0, keepdim=True))
    direct_mean = norm(norm(texts[:5] @ wn.T).mean(axis=0, keepdims=True))
    direct_clips = norm((frames.astype(np.float64) @ wn.T).mean(axis=1))
    np.testing.assert_allclose((images @ mean_text.T).numpy(), direct_clips @ direct_mean.T, atol=1e-12)


def test_mlp_head_is_applied_per_frame(tmp_path):
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    centers, labels, image = synthetic(rng, 60, ALPHABETICAL, frames=3)
    texts = text_groups({"an_expression_of": protocol.prompt_sets()["an_expression_of"]}, centers, rng)
    cache = make_cache(tmp_path / "clips.h5", ALPHABETICAL, labels, image, texts)
    head = Head(module=build_head("mlp", D, DT), kind="mlp", meta={"clip_key": KEY, "clip": CLIP})
    [r] = evaluate(head, [cache])

    def mapper(v):
        with torch.no_grad():
            return head.module(torch.from_numpy(v.astype(np.float32))).double().numpy()

    feats, attrs = texts[fmt.text_path(KEY, "an_expression_of")]
    war, uar, _, _ = expected(image, labels, ALPHABETICAL, feats, attrs["class_index"], mapper)
    assert (r["method"], r["war"], r["uar"]) == ("exp-clip", pytest.approx(war), pytest.approx(uar))


KNOWN = ["angry", "fear", "happy", "sad"]  # folder order; Fear has no items


def known_answer_cache(tmp_path, failed=(), unlabelled=(), stored_names=KNOWN):
    """One-hot prompts and images: the predictions are chosen, so WAR and UAR are known by hand."""
    names = KNOWN
    truth_pred = ([("happy", "happy")] * 3 + [("happy", "sad"), ("sad", "sad"), ("sad", "sad")]
                  + [("angry", "angry")] + [("angry", "happy")] * 3)
    labels = [-1 if i in unlabelled else names.index(t) for i, (t, _) in enumerate(truth_pred)]
    order = protocol.class_order()
    image = np.stack([np.eye(11)[order.index(protocol.canonical_class(p))] for _, p in truth_pred]).astype(np.float16)
    texts = {
        fmt.text_path(KEY, "class_name"): (
            np.eye(11, dtype=np.float32),
            {"prompts": order, "class_names": order, "class_index": list(range(11))},
        )
    }
    return make_cache(tmp_path / "known.h5", stored_names, labels, image, texts, failed=failed)


def test_hand_counted_war_uar_and_absent_class(tmp_path):
    [r] = evaluate(None, [known_answer_cache(tmp_path)], baseline=True)
    # happy 3/4, sad 2/2, angry 1/4 correct: WAR 6/10, UAR mean(75, 100, 25); Fear is absent.
    assert r["method"] == "clip" and r["prompt_set"] == "class_name"
    assert r["classes"] == ["Happiness", "Sadness", "Anger", "Fear"]
    assert r["war"] == pytest.approx(60.0) and r["uar"] == pytest.approx(200 / 3)
    assert r["per_class"] == {"Happiness": 75.0, "Sadness": 100.0, "Anger": 25.0, "Fear": None}
    assert r["confusion"] == [[3, 1, 0, 0], [0, 2, 0, 0], [3, 0, 1, 0], [0, 0, 0, 0]]


def test_numeric_class_names_through_a_label_map(tmp_path):
    cache = known_answer_cache(tmp_path, stored_names=["0", "1", "2", "3"])
    label_map = tmp_path / "map.csv"
    label_map.write_text("label,name\n0,Anger\n1,Fear\n2,Happiness\n3,Sadness\n")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--baseline",
            "--cache",
            str(cache),
            "--label-map",
            str(label_map),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    [r] = json.loads((tmp_path / "r.json").read_text())
    assert r["war"] == pytest.approx(60.0) and r["per_class"]["Anger"] == 25.0
    result = CliRunner().invoke(app, ["evaluate", "--baseline", "--cache", str(cache)])
    assert result.exit_code == 2 and "--label-map" in result.output and "Traceback" not in result.output


def test_builtin_rafdb_label_map_by_name(tmp_path):
    cache = known_answer_cache(tmp_path, stored_names=["6", "2", "4", "5"])  # RAF-DB: Anger, Fear, Happiness, Sadness
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app, ["evaluate", "--baseline", "--cache", str(cache), "--label-map", "rafdb", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    [r] = json.loads(out.read_text())
    assert r["classes"] == ["Happiness", "Sadness", "Anger", "Fear"] and r["war"] == pytest.approx(60.0)


def test_failed_and_unlabelled_rows_are_skipped(tmp_path):
    cache = known_answer_cache(tmp_path, failed=(0, 6), unlabelled=(9,))  # right happy, right angry, wrong angry
    [r] = evaluate(None, [cache], baseline=True)
    assert r["n"] == 7 and r["skipped"] == 3
    assert r["war"] == pytest.approx(400 / 7) and r["uar"] == pytest.approx((200 / 3 + 100 + 0) / 3)
    assert r["per_class"]["Happiness"] == pytest.approx(200 / 3) and r["per_class"]["Anger"] == 0.0


def test_head_of_another_encoder_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    centers, labels, image = synthetic(rng, 20, ALPHABETICAL)
    other = {**CLIP, "model": "ViT-Other"}
    cache = make_cache(
        tmp_path / "e.h5",
        ALPHABETICAL,
        labels,
        image,
        text_groups({"class_name": protocol.prompt_sets()["class_name"]}, centers, rng, "ViT-Other@test"),
        key="ViT-Other@test",
        clip=other,
    )
    with pytest.raises(ExpclipError) as e:
        evaluate(linear_head(rng), [cache])
    assert "ViT-T" in str(e.value) and "ViT-Other@test" in str(e.value)


def test_official_head_is_accepted_with_a_warning_and_dimensions_checked(tmp_path):
    rng = np.random.default_rng(4)
    centers, labels, image = synthetic(rng, 20, ALPHABETICAL)
    cache = make_cache(
        tmp_path / "e.h5",
        ALPHABETICAL,
        labels,
        image,
        text_groups({"class_name": protocol.prompt_sets()["class_name"]}, centers, rng),
    )
    official = Head(module=linear_head(rng).module, kind="linear", meta={})
    with pytest.warns(UserWarning, match="no provenance"):
        [r] = evaluate(official, [cache])
    assert r["method"] == "exp-clip"
    wrong = Head(module=torch.nn.Linear(D + 1, DT, bias=False), kind="linear", meta={})
    with pytest.raises(ExpclipError, match=f"head maps {D + 1}-d"):
        evaluate(wrong, [cache])


def test_missing_prompt_set_and_ambiguous_key(tmp_path):
    rng = np.random.default_rng(5)
    centers, labels, image = synthetic(rng, 20, ALPHABETICAL)
    texts = text_groups({"class_name": protocol.prompt_sets()["class_name"]}, centers, rng)
    cache = make_cache(tmp_path / "e.h5", ALPHABETICAL, labels, image, texts)
    with pytest.raises(ExpclipError, match=r"no prompt set ensemble_ten .*--prompts FILE\.json"):
        evaluate(None, [cache], baseline=True, prompt_sets=["ensemble_ten"])
    second = {**CLIP, "model": "ViT-U"}
    items = dict(texts)
    items.update(text_groups({"class_name": protocol.prompt_sets()["class_name"]}, centers, rng, "ViT-U@test"))
    make_cache(cache, ALPHABETICAL, labels, image, items, key="ViT-U@test", clip=second)  # extends the cache
    with pytest.raises(ExpclipError, match=r"several CLIP keys fit \(ViT-T@test .*ViT-U@test"):
        evaluate(None, [cache], baseline=True)
    assert evaluate(None, [cache], baseline=True, clip_key="ViT-U@test")[0]["clip_key"] == "ViT-U@test"
    assert evaluate(linear_head(rng), [cache])[0]["clip_key"] == KEY  # the head's provenance picks its key


def test_cli_writes_reports_and_errors_exit_2(tmp_path, reference_sets):
    rng = np.random.default_rng(6)
    centers, labels, image = synthetic(rng, 40, ALPHABETICAL)
    cache = make_cache(tmp_path / "rafdb.h5", ALPHABETICAL, labels, image, text_groups(reference_sets, centers, rng))
    head = linear_head(rng)
    save_head(head.module, "linear", head.meta, tmp_path / "head")
    runner = CliRunner()
    args = [
        "evaluate",
        "--head",
        str(tmp_path / "head"),
        "--cache",
        str(cache),
        "--baseline",
        "--prompt-set",
        "ensemble_five",
    ]
    result = runner.invoke(
        app,
        args
        + ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "--out-dir", str(tmp_path / "png")],
    )
    assert result.exit_code == 0, result.output
    assert "Exp-CLIP" in result.output and "Δ" in result.output
    records = json.loads((tmp_path / "r.json").read_text())
    assert [(r["method"], r["prompt_set"]) for r in records] == [
        ("clip", "ensemble_five"),
        ("exp-clip", "ensemble_five"),
    ]
    assert (tmp_path / "r.csv").read_text().startswith("dataset,method,prompt_set")
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["rafdb.png"]  # CLIP beside Exp-CLIP
    result = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "counts"), "--confusion-counts"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "counts").iterdir()) == [
        "rafdb__clip__ensemble_five.png",
        "rafdb__exp-clip__ensemble_five.png",
    ]

    export_official(head, tmp_path / "official.pth")
    result = runner.invoke(
        app, ["evaluate", "--head", str(tmp_path / "official.pth"), "--cache", str(cache), "--prompt-set", "class_name"]
    )
    assert result.exit_code == 0 and "warning" in result.output and "no provenance" in result.output

    for bad, message in (
        (["evaluate", "--cache", str(cache)], "--baseline"),
        (["evaluate", "--baseline", "--cache", str(cache), "--prompt-set", "nope"], "--prompts FILE.json"),
        (["evaluate", "--baseline", "--cache", str(cache), "--ensemble", "median"], "--ensemble"),
        (["evaluate", "--baseline", "--cache", str(tmp_path / "missing.h5")], "missing.h5"),
        (["evaluate", "--baseline", "--cache", str(cache), "--confusion-counts"],
         "error: --confusion-counts: draws into --out-dir DIR; give one"),
    ):
        result = runner.invoke(app, bad, env={"COLUMNS": "250"})  # click's error box would cut a long path short
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("frames", [0, 4])
def test_large_caches_are_read_in_blocks_with_the_same_records(tmp_path, reference_sets, monkeypatch, frames):
    """Blocks of 12 frame rows (3 clips, or 12 images), failed rows inside blocks: the records equal those
    of one whole read, and no read exceeds a block."""
    from expclip.cache.reader import CacheReader
    from expclip.stages.shared import scoring

    rng = np.random.default_rng(5)
    centers, labels, image = synthetic(rng, 50, ALPHABETICAL, frames)
    cache = make_cache(
        tmp_path / "big.h5",
        ALPHABETICAL,
        labels,
        image,
        text_groups(reference_sets, centers, rng),
        failed=(0, 13, 14, 49),
    )
    head = linear_head(rng)
    whole = evaluate(head, [cache], baseline=True)
    reads = []
    real_rows = CacheReader.rows
    monkeypatch.setattr(CacheReader, "rows", lambda self, p, a, b: reads.append(b - a) or real_rows(self, p, a, b))
    monkeypatch.setattr(scoring, "BLOCK_ROWS", 12)
    blocked = evaluate(head, [cache], baseline=True)
    assert blocked == whole and whole[0]["skipped"] == 4
    assert max(reads) == (3 if frames else 12) and sum(reads) == 50  # every item read once, a block at a time


def test_a_named_benchmark_scores_only_its_classes(tmp_path, reference_sets):
    """AffectNet7 is AffectNet without Contempt (protocol.json: 7 classes); AffectNet8 keeps it."""
    rng = np.random.default_rng(7)
    names = [*ALPHABETICAL, "contempt"]
    centers, labels, image = synthetic(rng, 80, names)
    texts = text_groups({"class_name": reference_sets["class_name"]}, centers, rng)
    seven = make_cache(tmp_path / "AffectNet7.h5", names, labels, image, texts)
    eight = make_cache(tmp_path / "AffectNet8.h5", names, labels, image, texts)
    [r7] = evaluate(None, [seven], baseline=True)
    [r8] = evaluate(None, [eight], baseline=True)
    contempt = labels == names.index("contempt")
    assert contempt.sum() > 0
    assert "Contempt" not in r7["classes"] and len(r7["classes"]) == 7 and "Contempt" in r8["classes"]
    assert r7["skipped"] == int(contempt.sum()) and r7["n"] == 80 - int(contempt.sum()) and r8["n"] == 80
    t = texts[fmt.text_path(KEY, "class_name")]
    seven_only = [i for i, c in enumerate(t[1]["class_index"]) if protocol.class_order()[c] != "Contempt"]
    war, uar, _, _ = expected(image[~contempt], labels[~contempt], ALPHABETICAL, t[0][seven_only],
                              np.asarray(t[1]["class_index"])[seven_only])
    assert r7["war"] == pytest.approx(war) and r7["uar"] == pytest.approx(uar)
