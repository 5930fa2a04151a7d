"""Benchmarks run rarely, on machines CI lacks; their smoke paths run here so a GPU session never finds them broken."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from expclip.cache.reader import CacheReader

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str, monkeypatch):
    """Import benchmarks/NAME.py (registered, so its dataclasses and pickled worker functions resolve) as
    `python benchmarks/NAME.py` would: with its folder on the path, for the modules it imports from beside it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_one_smoke(tmp_path, capsys, monkeypatch):
    """The tiny path runs the real `extract` with injected encoders and prints every row of the table."""
    faces = 128
    rows = _script("stage_one", monkeypatch).main(
        ["--tiny", "--faces", str(faces), "--batch-size", "32", "--workdir", str(tmp_path)]
    )

    printed = capsys.readouterr().out
    assert "expclip extract (stage one)" in printed and "torch " in printed
    assert [r.name for r in rows][:2] == ["CLIP alone (--no-teacher)", "CLIP + teacher"]
    assert rows[2].name.startswith("  teacher alone, T5 input ")
    for row in rows:
        assert row.name.strip()[:12] in printed
        assert row.plain > 0 and row.flop > 0 and row.cosine > 0.99  # tiny models: bf16 barely moves features
    for row in rows[:2]:
        assert row.e2e.rate > 0 and row.e2e.rerun > 0
        assert sum(row.e2e.split.values()) > 0
    assert rows[1].flop > rows[0].flop  # the teacher's FLOPs are counted too

    with CacheReader(tmp_path / "clip-teacher.h5") as cache:
        assert len(cache.items()) == faces and not cache.failures()
        (teacher,) = cache.teacher_keys()
        image, taught = cache.image(cache.image_keys()[0]), cache.teacher(*teacher)
    assert image.shape[0] == taught.shape[0] == faces
    assert np.isfinite(image).all() and np.isfinite(taught).all()
    with CacheReader(tmp_path / "clip.h5") as cache:
        assert len(cache.items()) == faces and cache.teacher_keys() == []


def test_audit_scale_smoke(tmp_path, capsys, monkeypatch):
    """2,000 planted-into rows against 300 on the CPU, in a child process: every planted pair found, nothing else."""
    (run,) = _script("audit_scale", monkeypatch).main(
        [
            "--rows",
            "2000",
            "--against",
            "300",
            "--planted",
            "20",
            "--devices",
            "cpu",
            "--block-rows",
            "512",
            "--workdir",
            str(tmp_path),
        ]
    )

    printed = capsys.readouterr().out
    assert "expclip audit at scale" in printed and "faiss " in printed and "20 / 20" in printed
    assert run.device == "cpu" and run.rows == 2000 and run.against == 300
    assert run.exact and run.planted_found == run.planted == 20
    assert run.rows_per_s > 0 and run.peak_rss >= run.baseline_rss > 0
    assert list(tmp_path.iterdir()) == []  # the temporary caches are removed


def test_predict_rate_smoke(capsys, monkeypatch):
    """The tiny path prints the three rows: predict --detector none, the encoder alone, batch size 1."""
    rows = _script("predict_rate", monkeypatch).main(["--tiny", "--faces", "6", "--batch-size", "4",
                                                      "--per-picture", "2"])
    printed = capsys.readouterr().out
    assert [r.faces for r in rows] == [6, 6, 2] and all(r.rate > 0 for r in rows)
    assert all(r.name in printed for r in rows) and "batch size 4" in printed and "(a)/(b):" in printed
