"""`expclip demo` (the README's main command): every stage for real, offline, on tiny encoders."""

import json

from typer.testing import CliRunner

from expclip.cache.reader import CacheReader
from expclip.cli import app
from expclip.stages.shared import protocol


def test_demo_runs_every_stage_and_says_what_it_is(tmp_path):
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output and "near chance by design" in result.output
    assert "expclip extract" in result.output and "expclip fit-head" in result.output  # commands of a real run
    for table_title in ("Zero-shot UAR / WAR (%) — prompt set a_photo_of_a_face",):
        assert table_title in result.output
    records = json.loads((workdir / "results.json").read_text())
    assert {(r["dataset"], r["method"]) for r in records} == {
        (d, m) for d in ("demo-images", "demo-clips") for m in ("clip", "exp-clip")
    }
    assert {r["prompt_set"] for r in records} == set(protocol.prompt_sets())
    assert all(0 <= r["uar"] <= 100 and 0 <= r["war"] <= 100 for r in records)
    with CacheReader(workdir / "caches" / "train.h5") as train:
        assert train.teacher_keys() and train.image_keys()
    with CacheReader(workdir / "caches" / "eval-clips.h5") as clips:
        assert clips.kind == "clips" and clips.image(clips.image_keys()[0]).shape[1] == 16
    head = json.loads((workdir / "heads" / "demo-head.json").read_text())
    assert head["n_train"] == 7 * 40 and len(head["history"]) == 5
    assert str(workdir / "caches" / "train.h5") in result.output
