"""`expclip demo` (the README's main command): every stage for real, offline, on tiny encoders pre-trained
on drawn faces, so that its accuracies show the method working and a broken stage shows."""

import json
from pathlib import Path
from statistics import mean

import pytest
from conftest import PROMPT_SETS
from typer.testing import CliRunner

from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.demo.walkthrough import DEMO_CLASSES, SYNTHETIC
from expclip.stages.evaluate import evaluate
from expclip.stages.shared.heads import load_head

CHANCE = 100 / len(DEMO_CLASSES)
# benchmarks/demo_seeds.py over demo seeds 0-15 (2 datasets x CLIP / Exp-CLIP x 5 prompt sets each): every UAR
# and WAR at least 33.3 % (Exp-CLIP on the 21 clips; on the images at least 61.9 %, CLIP at least 67.9 %), and
# a label map shifting each class to the next lowered every score by at least 19 points, to a mean of at most 8.6 %.
MARGIN = 10.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple:
    """(workdir, printed output) of one `expclip demo` (~25 s on two cores), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    return workdir, result.output


def test_demo_runs_every_stage_and_says_what_it_is(demo):
    workdir, output = demo
    assert SYNTHETIC in output  # all synthetic, no benchmark
    assert "expclip extract" in output and "expclip fit-head" in output  # commands of a real run
    for table_title in ("Zero-shot UAR / WAR (%) — prompt set a_photo_of_a_face",):
        assert table_title in output
    records = json.loads((workdir / "results.json").read_text())
    assert {(r["dataset"], r["method"]) for r in records} == {
        (d, m) for d in ("demo-images", "demo-clips") for m in ("clip", "exp-clip")
    }
    assert {r["prompt_set"] for r in records} == set(PROMPT_SETS)
    with CacheReader(workdir / "caches" / "train.h5") as train:
        assert train.teacher_keys() and train.image_keys()
    with CacheReader(workdir / "caches" / "eval-clips.h5") as clips:
        assert clips.kind == "clips" and clips.image(clips.image_keys()[0]).shape[1] == 16
    head = json.loads((workdir / "heads" / "demo-head.json").read_text())
    assert head["n_train"] == 7 * 40 and len(head["history"]) == 100  # HEAD_EPOCHS
    assert str(workdir / "caches" / "train.h5") in output


def test_demo_beats_chance_and_a_permuted_label_map_sinks_it(demo):
    """The pre-trained encoders make the demo an end-to-end check: clearly above chance, and a label map
    that swaps the classes round (the regression a random demo could not show) falls below chance."""
    workdir, _ = demo
    records = json.loads((workdir / "results.json").read_text())
    for r in records:
        assert min(r["uar"], r["war"]) >= CHANCE + MARGIN, r
    shifted = {name: DEMO_CLASSES[(i + 1) % len(DEMO_CLASSES)] for i, name in enumerate(DEMO_CLASSES)}
    caches = [workdir / "caches" / "eval-images.h5", workdir / "caches" / "eval-clips.h5"]
    permuted = evaluate(load_head(workdir / "heads" / "demo-head"), caches, baseline=True, label_map=shifted)
    right = {(r["dataset"], r["method"], r["prompt_set"]): r for r in records}
    assert len(permuted) == len(records)
    for r in permuted:
        same = right[r["dataset"], r["method"], r["prompt_set"]]
        assert r["uar"] <= same["uar"] - MARGIN and r["war"] <= same["war"] - MARGIN, (r, same)
    assert mean(r["uar"] for r in permuted) < CHANCE and mean(r["war"] for r in permuted) < CHANCE


def test_a_rerun_after_an_upgrade_discards_only_the_demos_caches_of_an_older_format(tmp_path):
    """The demo's caches are derived data: one an older expclip wrote (the real 0.1.0 file, format_version 1) is
    removed so the demo extracts it again; a current cache stays, and a damaged or foreign file is still an error."""
    import h5py
    import numpy as np

    from expclip.base.errors import ExpclipError
    from expclip.cache import format as fmt
    from expclip.cache.writer import write_arrays
    from expclip.demo.walkthrough import discard_older_caches

    old = tmp_path / "old.h5"
    old.write_bytes((Path(__file__).parent / "data" / "cache-expclip-0.1.0.h5").read_bytes())
    current = tmp_path / "current.h5"
    items = fmt.Items(ids=["a.png"], labels=np.zeros(1, np.int64), class_names=["Happiness"])
    write_arrays(current, items, file_attrs={}, aligned={fmt.image_path("m@t"): (np.ones((1, 4), np.float32), {})})
    before = current.read_bytes()
    discard_older_caches([old, current, tmp_path / "never-written.h5"])
    assert not old.exists() and current.read_bytes() == before
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ExpclipError, match="not an expclip cache"):
        discard_older_caches([foreign])
    assert foreign.exists()
