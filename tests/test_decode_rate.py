"""benchmarks/decode_rate.py's smoke path, so a GPU run never finds it broken: extract's data path timed without
the encoders, its table and one verdict per configuration."""

import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CONFIGS = ["CLIP alone (--no-teacher)", "CLIP + teacher"]


def _script(name: str, monkeypatch):
    """Import benchmarks/NAME.py as `python benchmarks/NAME.py` would (tests/test_benchmarks.py's helper)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(printed: str) -> tuple[list[str], list[list[str]]]:
    """A printed rich table's header and body rows, cell by cell."""
    header = next(line for line in printed.splitlines() if "configuration" in line)
    body = [re.split(r"\s*│\s*", line.strip("│ ")) for line in printed.splitlines() if line.startswith("│")]
    return re.split(r"\s*┃\s*", header.strip("┃ ")), body


def test_decode_rate_smoke(capsys, monkeypatch):
    """This process and one worker per configuration: faces timed after one warm-up batch per process, the
    printed rates are the rows', and each verdict names the configuration's fastest row with workers."""
    rows = _script("decode_rate", monkeypatch).main(["--tiny", "--faces", "16", "--batch-size", "8", "--workers", "1"])

    printed = capsys.readouterr().out
    assert "torch " in printed and "extract's data path" in printed
    assert [(r.config, r.workers) for r in rows] == [(c, w) for c in CONFIGS for w in (0, 1)]
    # 2 batches of 8, the first the warm-up; in this process one worker's share: max(2 batches, 16 // 1 faces).
    assert [r.faces for r in rows] == [8] * 4
    assert all(r.seconds > 0 for r in rows)
    header, body = _cells(printed)
    assert header == ["configuration", "workers", "faces timed", "faces/s", "faces/s per worker"]
    assert body == [[r.config, str(r.workers), str(r.faces), f"{r.faces / r.seconds:,.0f}",
                     f"{r.faces / r.seconds:,.0f}"] for r in rows]
    for config in CONFIGS:
        best = next(r for r in rows if r.config == config and r.workers == 1)
        assert (f"{config}: decoding limits stage one above {best.faces / best.seconds:,.0f} faces/s on this "
                "machine (1 worker)\n") in printed
    assert "target" not in printed  # the tiny CLIP is no stage-one architecture


def test_the_per_worker_column_divides_by_the_workers(monkeypatch):
    """4 workers' 1,000 faces/s are 250 per worker; this process alone is one, and never the verdict's row:
    there, decoding would take turns with the encoders."""
    decode_rate = _script("decode_rate", monkeypatch)
    rows = [decode_rate.Rate(CONFIGS[1], 0, 3_000, 2.0), decode_rate.Rate(CONFIGS[1], 4, 2_000, 2.0)]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(decode_rate.table(rows))

    assert _cells(console.export_text())[1] == [[CONFIGS[1], "0", "3,000", "1,500", "1,500"],
                                                [CONFIGS[1], "4", "2,000", "1,000", "250"]]
    assert decode_rate.verdict(rows, CONFIGS[1], real=True) == (
        "CLIP + teacher: decoding limits stage one above 1,000 faces/s on this machine (4 workers); "
        "issue 20's target 425 faces/s is within it")


def test_decode_rate_needs_a_timed_batch_after_each_warm_up(monkeypatch, capsys):
    """2 workers warm up on 2 batches of 8: 16 faces would leave none to time."""
    with pytest.raises(SystemExit) as stopped:
        _script("decode_rate", monkeypatch).main(["--tiny", "--faces", "16", "--batch-size", "8", "--workers", "2"])
    assert stopped.value.code == 2
    assert "--faces: at least (most workers + 1) × batch = 24" in capsys.readouterr().err


def test_decode_rate_refuses_a_batch_size_below_one(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        _script("decode_rate", monkeypatch).main(["--tiny", "--batch-size", "-4"])
    assert stopped.value.code == 2 and "--batch-size -4: at least 1" in capsys.readouterr().err
